//! Where the configuration comes from: a TOML file, the embedded default or test text, plus
//! `TRACKPROXY__SECTION__KEY` environment overrides, merged by the `config` crate into one
//! untyped tree. This is the only part that knows the `config` crate's sources, so it also
//! names the origin of each value (the file, or the environment variable).

use std::path::Path;

use config::{Map, Value, ValueKind};

use super::problem::Errors;

/// The configuration compiled into the binary: what `trackproxy serve` runs with no file.
/// Loopback only, a self-signed certificate for `localhost`, upstream sendgrid.net.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/default.toml");

/// Label used in messages for the embedded default configuration.
pub const EMBEDDED_LABEL: &str = "<embedded default config>";

/// Prefix of environment overrides: `TRACKPROXY__SERVER__HTTPS_LISTEN=0.0.0.0:443`.
pub const ENV_PREFIX: &str = "TRACKPROXY";

/// The environment separator between prefix, section and key.
pub const ENV_SEPARATOR: &str = "__";

/// Where to read the configuration from.
#[derive(Debug, Clone)]
pub enum Source<'a> {
    /// A TOML file.
    File(&'a Path),
    /// The compiled-in default ([`EMBEDDED_DEFAULT`]).
    Embedded,
    /// TOML text (tests); the label names it in messages.
    Text {
        /// Name used in messages.
        label: &'a str,
        /// TOML content.
        toml: &'a str,
    },
}

/// Reads `source` and the environment overrides (`None`: the process environment) into one
/// untyped tree; returns the label naming the source in messages, and the tree.
///
/// # Errors
/// When the file is missing or is not TOML (a single problem: nothing can be checked further).
pub(super) fn tree(
    source: &Source<'_>,
    env: Option<Map<String, String>>,
) -> Result<(String, Map<String, Value>), Errors> {
    let (label, builder) = match source {
        Source::File(path) => {
            let label = path.display().to_string();
            if !path.is_file() {
                let why = if path.exists() {
                    "is not a regular file"
                } else {
                    "not found"
                };
                return Err(Errors::one(label, "", format!("configuration file {why}")));
            }
            let b = config::Config::builder()
                .add_source(config::File::from(*path).format(config::FileFormat::Toml));
            (label, b)
        }
        Source::Embedded => (
            EMBEDDED_LABEL.to_owned(),
            config::Config::builder().add_source(config::File::from_str(
                EMBEDDED_DEFAULT,
                config::FileFormat::Toml,
            )),
        ),
        Source::Text { label, toml } => (
            (*label).to_owned(),
            config::Config::builder()
                .add_source(config::File::from_str(toml, config::FileFormat::Toml)),
        ),
    };
    let env = config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator(ENV_SEPARATOR)
        .separator(ENV_SEPARATOR)
        .source(env);
    let built = builder.add_source(env).build().map_err(|e| {
        let message = match e {
            config::ConfigError::FileParse { cause, .. } => format!("not valid TOML: {cause}"),
            other => other.to_string(),
        };
        Errors::one(label.clone(), "", message)
    })?;
    let ValueKind::Table(root) = built.cache.kind else {
        return Err(Errors::one(label, "", "expected a table at the top level"));
    };
    Ok((label, root))
}

/// Where the value of `key` (a dotted path) came from: the environment variable that set it,
/// or else `file`, the label [`tree`] returned.
pub(super) fn origin(value: Option<&Value>, key: &str, file: &str) -> String {
    match value.and_then(Value::origin) {
        Some("the environment") => format!(
            "environment variable {ENV_PREFIX}{ENV_SEPARATOR}{}",
            key.to_uppercase().replace('.', ENV_SEPARATOR)
        ),
        // There is only one file source: name it as the user did (the `config` crate
        // records some paths relative to the working directory).
        _ => file.to_owned(),
    }
}
