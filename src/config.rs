//! The configuration file: one TOML document. Unknown keys are errors, and
//! every error names the key (`toml` reports the path and line).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::wal::WalConfig;

/// Everything `walrelay` reads from its config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[wal]`: the write-ahead log.
    #[serde(default)]
    pub wal: WalConfig,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key, or a value of the wrong type;
    /// the message names the key and line.
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

impl Config {
    /// Reads and parses `path`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and, for content errors, the key.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.into(),
            message,
        })
    }

    pub(crate) fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("[wal]\ndir = \"x\"\nmax_bytez = 3\n").unwrap_err();
        assert!(err.contains("max_bytez"), "{err}");
        let err = Config::parse("[wall]\n").unwrap_err();
        assert!(err.contains("wall"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = Config::parse("[wal]\nmax_bytes = \"big\"\n").unwrap_err();
        assert!(err.contains("max_bytes"), "{err}");
    }

    #[test]
    fn example_file_parses() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/walrelay.example.toml"
        ))
        .unwrap();
        Config::parse(&text).unwrap();
    }
}
