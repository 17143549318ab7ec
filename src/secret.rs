//! [`Secret`]: a token or password that `Debug` prints as `[redacted]`. A
//! leaf module (imports nothing of the crate) so that every config section,
//! client and sink can hold one without importing `config.rs`.

use serde::Deserialize;

/// A secret (token, password): never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}
