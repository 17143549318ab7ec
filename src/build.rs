//! Compiles the collectors' gRPC contract (`src/ingest/grpc/raven.proto`) with
//! protox, a pure-Rust protobuf compiler: the build needs no `protoc`.
//! Also records the git commit as `WALRELAY_COMMIT` (shown by `/health` and
//! `/ping?verbose=true`) when building from a git checkout.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=src/ingest/grpc/raven.proto");
    if let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) {
        println!("cargo:rustc-env=WALRELAY_COMMIT={commit}");
        // Re-run when HEAD moves: HEAD itself, the branch it names, and
        // packed refs (worktrees keep HEAD apart from the shared refs).
        for path in [
            git(&["rev-parse", "--git-path", "HEAD"]),
            git(&["symbolic-ref", "-q", "HEAD"])
                .and_then(|r| git(&["rev-parse", "--git-path", &r])),
            git(&["rev-parse", "--git-path", "packed-refs"]),
        ]
        .into_iter()
        .flatten()
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let fds = protox::compile(["raven.proto"], ["src/ingest/grpc"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
