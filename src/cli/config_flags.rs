//! The configuration flags shared by `serve` and `doctor`: one spelling per key, layered over
//! the environment and the `--config` file by [`connwarden::config::Config::load`].

use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use connwarden::config::{Config, ConfigError, Key, Settings};

/// Exit status for a configuration error, so scripts can tell it from a runtime failure.
pub const EXIT_CONFIG: u8 = 2;

/// Help text on the layering, for the commands that take [`ConfigFlags`].
pub fn layers_help() -> String {
    let key = Key::KeepaliveIdle;
    format!(
        "Every flag can also be set as CONNWARDEN_<KEY> (for example {}=20s) or in the --config file ({key} = \"20s\"). Durations: 30s, 2m, 1h, 500ms. Every key: docs/CONFIGURATION.md.",
        key.env_var()
    )
}

/// The configuration flags `serve` and `doctor` share: one per key of the table
/// ([`Key::ALL`]), with its documentation and default as help. Each may also be set as
/// `CONNWARDEN_<KEY>` in the environment or as `<key>` in the `--config` file; flags win over
/// the environment, the environment over the file.
#[derive(Clone, Debug, Default)]
pub struct ConfigFlags {
    /// TOML configuration file.
    pub config: Option<PathBuf>,
    /// The keys given as flags, the top configuration layer.
    flags: Settings,
}

/// The id of `--config` among the flags.
const CONFIG_FILE: &str = "config";

/// The flag of `key`: `--keepalive-idle DURATION`, repeatable for a key that takes a list, and
/// for a `BOOL` also without a value (`--reuse-port` is `--reuse-port true`).
fn flag(key: Key) -> Arg {
    let arg = Arg::new(key.name())
        .long(key.flag().trim_start_matches('-').to_owned())
        .value_name(key.value_name())
        .help(format!("{} [default: {}]", key.doc(), key.default_text()));
    if key.takes_list() {
        arg.action(ArgAction::Append)
    } else if key.value_name() == "BOOL" {
        arg.num_args(0..=1).default_missing_value("true")
    } else {
        arg
    }
}

impl Args for ConfigFlags {
    fn augment_args(cmd: Command) -> Command {
        let file = Arg::new(CONFIG_FILE)
            .long(CONFIG_FILE)
            .value_name("FILE")
            .value_parser(clap::value_parser!(PathBuf))
            .help("TOML configuration file");
        Key::ALL
            .iter()
            .fold(cmd.arg(file), |cmd, &key| cmd.arg(flag(key)))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for ConfigFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = Settings::default();
        for &key in Key::ALL {
            for value in matches.get_many::<String>(key.name()).into_iter().flatten() {
                flags.set(key, value.as_str());
            }
        }
        Ok(ConfigFlags {
            config: matches.get_one::<PathBuf>(CONFIG_FILE).cloned(),
            flags,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl ConfigFlags {
    /// The configuration: defaults < `--config` file < environment < these flags.
    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load(self.config.as_deref(), self.flags.clone())
    }
}
