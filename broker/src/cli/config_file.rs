//! The CLI's config file: where the broker is and how to log in, for every command that
//! talks to one. `$BROKER_CONFIG` names it; without that it is
//! `$XDG_CONFIG_HOME/broker/config.toml`, else `~/.config/broker/config.toml` (used when
//! it exists). A flag beats its environment variable, which beats the file, which beats
//! the default.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

/// The settings a config file may hold, each what the flag of the same name takes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub server: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub vhost: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub cert_key: Option<PathBuf>,
}

impl ConfigFile {
    /// The config file's settings; none when there is no file (an error when
    /// `$BROKER_CONFIG` names one that cannot be read, or the file does not parse).
    pub fn load() -> anyhow::Result<ConfigFile> {
        let (path, named) = match std::env::var_os("BROKER_CONFIG") {
            Some(path) => (PathBuf::from(path), true),
            None => match default_path() {
                Some(path) => (path, false),
                None => return Ok(ConfigFile::default()),
            },
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if !named && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ConfigFile::default());
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut file: ConfigFile =
            toml::from_str(&text).with_context(|| format!("in {}", path.display()))?;
        // Certificate paths are relative to the file, as a user writing it expects.
        let dir = path.parent().unwrap_or(Path::new("."));
        for relative in [&mut file.ca, &mut file.cert, &mut file.cert_key] {
            if let Some(p) = relative.as_mut().filter(|p| p.is_relative()) {
                *p = dir.join(&*p);
            }
        }
        Ok(file)
    }
}

/// `$XDG_CONFIG_HOME/broker/config.toml`, else `$HOME/.config/broker/config.toml`.
fn default_path() -> Option<PathBuf> {
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(config_home.join("broker").join("config.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_settings_are_refused() {
        let refused = toml::from_str::<ConfigFile>("server = \"ws://h:1\"\nusr = \"ann\"\n");
        assert!(refused.unwrap_err().to_string().contains("usr"));
        let file: ConfigFile = toml::from_str("server = \"ws://h:1\"\nvhost = \"prod\"\n").unwrap();
        assert_eq!(file.server.as_deref(), Some("ws://h:1"));
        assert_eq!(file.vhost.as_deref(), Some("prod"));
    }
}
