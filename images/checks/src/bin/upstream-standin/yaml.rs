//! Reading a rendered YAML config the way the stand-ins check it: a value by its dotted path,
//! with errors that name the file and the key.

use std::path::Path;

use anyhow::Context;
use serde_yaml_ng::Value;

/// A parsed config file.
pub struct Config {
    pub path: String,
    pub root: Value,
}

impl Config {
    pub fn load(path: &str) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
        let root =
            serde_yaml_ng::from_str(&text).with_context(|| format!("{path} is not valid YAML"))?;
        Ok(Config {
            path: path.to_string(),
            root,
        })
    }

    /// The value at `key` (`server.http_listen_port`), if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        at(&self.root, key)
    }

    /// A required string.
    pub fn string(&self, key: &str) -> anyhow::Result<String> {
        string_at(&self.root, key).with_context(|| format!("{}: {key}", self.path))
    }

    /// A required absolute path.
    pub fn absolute_path(&self, key: &str) -> anyhow::Result<String> {
        let path = self.string(key)?;
        anyhow::ensure!(
            Path::new(&path).is_absolute(),
            "{}: {key} is `{path}`, not an absolute path",
            self.path
        );
        Ok(path)
    }

    /// A required port number.
    pub fn port(&self, key: &str) -> anyhow::Result<u16> {
        self.get(key)
            .and_then(Value::as_u64)
            .and_then(|port| u16::try_from(port).ok())
            .filter(|port| *port > 0)
            .with_context(|| format!("{}: {key} is missing or not a port number", self.path))
    }

    /// A required, non-empty list.
    pub fn list(&self, key: &str) -> anyhow::Result<&Vec<Value>> {
        self.get(key)
            .and_then(Value::as_sequence)
            .filter(|list| !list.is_empty())
            .with_context(|| format!("{}: {key} is missing or an empty list", self.path))
    }
}

/// The value at a dotted `key` below `value`.
pub fn at<'v>(value: &'v Value, key: &str) -> Option<&'v Value> {
    key.split('.')
        .try_fold(value, |value, part| value.as_mapping()?.get(part))
}

/// A required string at `key` below `value`; the error says which key.
pub fn string_at(value: &Value, key: &str) -> anyhow::Result<String> {
    match at(value, key) {
        Some(Value::String(text)) if !text.is_empty() => Ok(text.clone()),
        Some(Value::Number(number)) => Ok(number.to_string()),
        Some(_) => anyhow::bail!("{key} is empty or not a string"),
        None => anyhow::bail!("{key} is missing"),
    }
}
