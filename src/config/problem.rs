//! What is wrong with a configuration: one [`Problem`] per bad key, all of them in [`Errors`].

use std::fmt;

/// One configuration problem: which key, where it came from, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `server.https_listen` or `hosts[2].name`; empty for file-level problems.
    pub key: String,
    /// The file the value came from, or `environment variable TRACKPROXY__…`.
    pub origin: String,
    /// What is wrong, and where useful how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.origin, self.message)
        } else {
            write!(f, "{}: {}: {}", self.origin, self.key, self.message)
        }
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Errors(pub Vec<Problem>);

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "{n} configuration problem{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.0 {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Errors {}

impl Errors {
    /// A single file-level problem.
    pub fn one(
        origin: impl Into<String>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Errors(vec![Problem {
            key: key.into(),
            origin: origin.into(),
            message: message.into(),
        }])
    }
}
