//! The layers a configuration is built from: each a set of keys with their values as text and
//! where they came from ([`Origin`]), so that an error can point at the file, the variable or
//! the flag.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::{ConfigError, Key, ENV_PREFIX};

/// Where a setting came from, so an error can point at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The embedded default.
    Default,
    /// The TOML file at this path.
    File(PathBuf),
    /// This environment variable.
    Env(String),
    /// This command-line flag.
    Flag(String),
    /// Set by the program that built the [`super::Config`] (not read from a layer).
    Code,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => write!(f, "default"),
            Origin::File(path) => write!(f, "from {}", path.display()),
            Origin::Env(var) => write!(f, "from environment variable {var}"),
            Origin::Flag(flag) => write!(f, "from flag {flag}"),
            Origin::Code => write!(f, "set by the program"),
        }
    }
}

/// One layer of raw settings: key to textual value(s), each with its origin.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    entries: BTreeMap<Key, (Vec<String>, Origin)>,
}

impl Settings {
    /// Reads a TOML file. Unknown keys are an error, so a typo cannot silently leave a default.
    pub fn from_toml_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        Settings::from_toml_str(&text, path)
    }

    /// Parses TOML text as if it had been read from `path`.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Settings, ConfigError> {
        let table: toml::Table = text.parse().map_err(|source| ConfigError::ParseFile {
            path: path.to_owned(),
            source,
        })?;
        let origin = Origin::File(path.to_owned());
        let mut settings = Settings::default();
        for (name, value) in table {
            let key = known(&name, &origin)?;
            let values = toml_values(key, &value, &origin)?;
            settings.entries.insert(key, (values, origin.clone()));
        }
        Ok(settings)
    }

    /// Reads `CONNWARDEN_<KEY>` variables from the process environment.
    pub fn from_env() -> Result<Settings, ConfigError> {
        Settings::from_vars(std::env::vars())
    }

    /// Reads `CONNWARDEN_<KEY>` variables from `vars`. A key that takes a list
    /// (`CONNWARDEN_LISTEN`) takes it comma-separated.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let mut settings = Settings::default();
        for (var, value) in vars {
            let Some(name) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let origin = Origin::Env(var.clone());
            let key = known(&name.to_ascii_lowercase(), &origin)?;
            let values = if key.takes_list() {
                value.split(',').map(|s| s.trim().to_owned()).collect()
            } else {
                vec![value]
            };
            settings.entries.insert(key, (values, origin));
        }
        Ok(settings)
    }

    /// Sets `key` (as the file spells it) as given by a command-line flag. A key that takes a
    /// list (`listen`, `nats_url`) may be set several times: values add up.
    pub fn set_flag(&mut self, key: &str, value: impl Into<String>) -> Result<(), ConfigError> {
        let origin = Origin::Flag(format!("--{}", key.replace('_', "-")));
        let key = known(key, &origin)?;
        self.set(key, value);
        Ok(())
    }

    /// Sets `key` as given by its command-line flag ([`Key::flag`]); see [`Settings::set_flag`].
    pub fn set(&mut self, key: Key, value: impl Into<String>) {
        let value = value.into();
        if let Some((values, Origin::Flag(_))) = self.entries.get_mut(&key) {
            if key.takes_list() {
                values.push(value);
                return;
            }
        }
        self.entries
            .insert(key, (vec![value], Origin::Flag(key.flag())));
    }

    /// Reads command-line flags, one per configuration key, spelled as `serve` spells them:
    /// `--keepalive-idle 20s`, `--keepalive-idle=20s`, and a flag with no value
    /// (`--reuse-port`) for `true`. For a program of your own that takes the same flags as
    /// `serve` without a parser of its own (`examples/line_echo.rs`); `serve` itself parses with
    /// clap, for its help. An argument that is not a key's flag is an error.
    ///
    /// ```
    /// use connwarden::config::{Config, Settings};
    ///
    /// let args = ["--keepalive-idle", "20s", "--listen=127.0.0.1:7100", "--reuse-port"];
    /// let flags = Settings::from_args(args.map(String::from))?;
    /// let config = Config::from_settings(&flags)?;
    /// assert_eq!(config.keepalive.idle, std::time::Duration::from_secs(20));
    /// assert!(config.reuse_port);
    /// # Ok::<(), connwarden::config::ConfigError>(())
    /// ```
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Result<Settings, ConfigError> {
        let mut settings = Settings::default();
        let mut args = args.into_iter().peekable();
        while let Some(arg) = args.next() {
            let Some(flag) = arg.strip_prefix("--") else {
                return Err(ConfigError::UnknownKey {
                    key: arg.clone(),
                    origin: Origin::Flag(arg),
                });
            };
            let (name, value) = match flag.split_once('=') {
                Some((name, value)) => (name, value.to_owned()),
                None => match args.next_if(|next| !next.starts_with("--")) {
                    Some(value) => (flag, value),
                    None => (flag, "true".to_owned()),
                },
            };
            let key = known(&name.replace('-', "_"), &Origin::Flag(format!("--{name}")))?;
            settings.set(key, value);
        }
        Ok(settings)
    }

    /// Overlays `higher`: each key it sets replaces this layer's value.
    pub fn merge(mut self, higher: Settings) -> Settings {
        self.entries.extend(higher.entries);
        self
    }

    /// The keys set, with their values as text and where they came from.
    pub fn iter(&self) -> impl Iterator<Item = (Key, &[String], &Origin)> + '_ {
        self.entries
            .iter()
            .map(|(key, (values, origin))| (*key, values.as_slice(), origin))
    }

    /// Whether `key` is set in this layer.
    pub fn is_set(&self, key: Key) -> bool {
        self.entries.contains_key(&key)
    }

    /// Where `key`'s value came from: [`Origin::Default`] when no layer set it.
    pub fn origin(&self, key: Key) -> Origin {
        self.entries
            .get(&key)
            .map_or(Origin::Default, |(_, origin)| origin.clone())
    }
}

/// The key named `name`, or the error naming where the unknown name was given.
fn known(name: &str, origin: &Origin) -> Result<Key, ConfigError> {
    Key::from_name(name).ok_or_else(|| ConfigError::UnknownKey {
        key: name.to_owned(),
        origin: origin.clone(),
    })
}

fn toml_values(key: Key, value: &toml::Value, origin: &Origin) -> Result<Vec<String>, ConfigError> {
    let scalar = |v: &toml::Value| match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    };
    let values = match value {
        toml::Value::Array(items) => items.iter().map(scalar).collect::<Option<Vec<_>>>(),
        other => scalar(other).map(|s| vec![s]),
    };
    values.ok_or_else(|| ConfigError::InvalidValue {
        key,
        value: value.to_string(),
        origin: origin.clone(),
        reason: "expected a string, an integer, a boolean or (for a list) an array".into(),
    })
}
