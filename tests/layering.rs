//! The crate's layering, checked on the source tree so that it stays true.
//!
//! Every `crate::<module>` path in `src/**/*.rs` (outside `//` comments,
//! `#[cfg(test)]` code included: a test module that reaches upward is as
//! much a tangle as production code) is an edge from the file's top-level
//! module to `<module>`. The edges must
//! 1. form no cycle, and
//! 2. point strictly downward in this order (a module may use any module of
//!    a lower rank, none of its own rank or above):
//!
//! ```text
//! rank 0  secret, routes, metrics, report, logging   leaves: import nothing of the crate
//! rank 1  record                                      the record model
//! rank 2  wal                                         the log
//! rank 3  drain                                       drainer, retry, Sink trait, sink health
//! rank 4  ingest                                      gate, HTTP and gRPC ingest
//! rank 5  db                                          the sinks (Influx, Timescale)
//! rank 6  config                                      the config file (sections owned below)
//! rank 7  relay, preflight, top, audit                the daemon, `check`, `top`, audit/rewind
//! rank 8  commands                                    the CLI's logic
//! ```
//!
//! `src/main.rs` (the binary, which uses `walrelay::`), `src/lib.rs` (only
//! `mod` lines) and `src/build.rs` (the build script) are not modules of the
//! crate and are skipped. Paths through `super::` are not followed: in this
//! tree they stay inside their top-level module (a `super::` that climbed
//! out of one would escape this test; write `crate::` instead).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The allowed order: a module may import modules of a strictly lower rank.
const RANKS: &[(&str, u32)] = &[
    ("secret", 0),
    ("routes", 0),
    ("metrics", 0),
    ("report", 0),
    ("logging", 0),
    ("record", 1),
    ("wal", 2),
    ("drain", 3),
    ("ingest", 4),
    ("db", 5),
    ("config", 6),
    ("relay", 7),
    ("preflight", 7),
    ("top", 7),
    ("audit", 7),
    ("commands", 8),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/wal/frame.rs` → `wal`,
/// `src/config.rs` → `config`); `None` for the files that are not modules.
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src()).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (!matches!(name.as_str(), "main" | "lib" | "build")).then_some(name)
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The top-level modules named by `crate::` paths in `code`, including
/// grouped imports (`use crate::{wal::Wal, record::Record};`).
fn referenced(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(i) = code[from..].find("crate::") {
        let at = from + i;
        from = at + "crate::".len();
        // `$crate::` and `walrelay_crate::` are not this crate's paths.
        if at > 0 && (is_ident(bytes[at - 1]) || bytes[at - 1] == b'$') {
            continue;
        }
        let rest = &code[from..];
        if let Some(group) = rest.strip_prefix('{') {
            // Names at brace depth 0 of the group, each before `::`, `,` or `}`.
            let mut depth = 0;
            let mut start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && depth == 0 && (c.is_ascii_alphabetic() || c == '_') => {
                        let name: String = group[j..]
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        out.insert(name);
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// Edges `from → to` with, for each, the files that make it.
fn edges() -> BTreeMap<(String, String), Vec<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    let mut edges: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for path in files {
        let Some(from) = module_of(&path) else {
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap();
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for to in referenced(&code) {
            if to != from {
                let rel = path.strip_prefix(src()).unwrap().display().to_string();
                edges.entry((from.clone(), to)).or_default().push(rel);
            }
        }
    }
    edges
}

fn rank(module: &str) -> Option<u32> {
    RANKS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
}

#[test]
fn the_parser_sees_plain_grouped_and_nested_paths_and_skips_others() {
    let code = "use crate::wal::Wal;\nuse crate::{record::Record, drain::{retry, Sink}};\n\
                let x = crate::config::Config::default();\n$crate::relay::x!();\nfoo_crate::db::x();";
    let got: Vec<String> = referenced(code).into_iter().collect();
    assert_eq!(got, ["config", "drain", "record", "wal"]);
}

#[test]
fn every_module_of_the_tree_has_a_rank() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let unranked: BTreeSet<String> = files
        .iter()
        .filter_map(|p| module_of(p))
        .filter(|m| rank(m).is_none())
        .collect();
    assert!(
        unranked.is_empty(),
        "modules without a place in RANKS (add them to the order in tests/layering.rs): {unranked:?}"
    );
}

#[test]
fn imports_point_downward_only() {
    let mut wrong = Vec::new();
    for ((from, to), files) in edges() {
        let (Some(rf), Some(rt)) = (rank(&from), rank(&to)) else {
            // Unranked modules are reported by the test above; names that
            // are not modules (`crate::VERSION`, a re-export) by none.
            continue;
        };
        if rt >= rf {
            wrong.push(format!(
                "{from} (rank {rf}) -> {to} (rank {rt}) in {}",
                files.join(", ")
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that do not point downward:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn module_imports_form_no_cycle() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in edges().into_keys() {
        graph.entry(from).or_default().insert(to);
    }
    // Depth-first search; a node met again while on the stack closes a cycle.
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        cycles: &mut Vec<String>,
    ) {
        if let Some(at) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(n.to_string());
            cycles.push(cycle.join(" -> "));
            return;
        }
        if !done.insert(n.to_string()) {
            return;
        }
        stack.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            visit(m, graph, stack, done, cycles);
        }
        stack.pop();
    }
    let mut cycles = Vec::new();
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        visit(n, &graph, &mut Vec::new(), &mut done, &mut cycles);
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}
