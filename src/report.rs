//! One line for an error and its causes, each cause once.
//!
//! Two conventions meet in our error chains: our own `thiserror` enums and
//! some dependencies (reqwest, hyper, tokio-postgres) put their cause in
//! their `Display` *and* return it from `source()`; others print only their
//! own layer. Printing `Display` alone loses the cause of the second kind;
//! walking `source()` and appending every message repeats the first kind's
//! causes ("error trying to connect: tcp connect error: Connection refused"
//! four times). [`chain`] walks the sources and appends a message only when
//! the text so far does not already contain it.

use std::error::Error;

/// `err`'s message followed by those of its causes that it does not already
/// include, joined by `": "`.
pub fn chain(err: &(dyn Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let msg = cause.to_string();
        if !msg.is_empty() && !text.contains(&msg) {
            text.push_str(": ");
            text.push_str(&msg);
        }
        source = cause.source();
    }
    text
}

/// Like [`chain`], starting at `err`'s first cause: for wrappers whose own
/// message only repeats what the caller says already (reqwest's "error
/// sending request for url (…)"). Falls back to `err`'s message when it has
/// no cause.
pub fn causes(err: &(dyn Error + 'static)) -> String {
    match err.source() {
        Some(first) => chain(first),
        None => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer that prints its cause (like hyper) or not (like io::Error's wrappers).
    #[derive(Debug)]
    struct Layer {
        msg: &'static str,
        prints_cause: bool,
        cause: Option<Box<Layer>>,
    }

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.msg)?;
            if let (true, Some(c)) = (self.prints_cause, &self.cause) {
                write!(f, ": {c}")?;
            }
            Ok(())
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.cause.as_deref().map(|c| c as _)
        }
    }

    fn layer(msg: &'static str, prints_cause: bool, cause: Option<Layer>) -> Layer {
        Layer {
            msg,
            prints_cause,
            cause: cause.map(Box::new),
        }
    }

    #[test]
    fn every_cause_appears_once_whichever_convention_each_layer_follows() {
        let refused = layer("Connection refused (os error 111)", false, None);
        let tcp = layer("tcp connect error", true, Some(refused));
        let hyper = layer("error trying to connect", true, Some(tcp));
        let top = layer("error sending request", true, Some(hyper));
        let want = "error sending request: error trying to connect: tcp connect error: Connection refused (os error 111)";
        assert_eq!(chain(&top), want);
        assert_eq!(
            causes(&top),
            "error trying to connect: tcp connect error: Connection refused (os error 111)"
        );

        // Layers that print only themselves: the chain supplies the causes.
        let io = layer("permission denied", false, None);
        let open = layer("cannot open the log", false, Some(io));
        assert_eq!(chain(&open), "cannot open the log: permission denied");
        assert_eq!(causes(&layer("alone", false, None)), "alone");

        // Mixed: the middle layer hides its cause, the top shows the middle.
        let io = layer("disk full", false, None);
        let mid = layer("fdatasync failed", false, Some(io));
        let top = layer("append failed", true, Some(mid));
        assert_eq!(chain(&top), "append failed: fdatasync failed: disk full");
    }
}
