//! Tags from a local file: a flat map of strings, JSON when the name ends in `.json`,
//! TOML otherwise. Re-read on every poll, so editing it drives `watch` locally.

use std::path::Path;

use crate::error::AgentError;
use crate::tags::Tags;

pub fn tags(path: &Path) -> Result<Tags, AgentError> {
    let fail = |message: String| AgentError::TagSource {
        source_name: format!("file:{}", path.display()),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let is_json = path.extension().is_some_and(|ext| ext == "json");
    if is_json {
        serde_json::from_str(&text).map_err(|e| fail(format!("not a flat JSON string map: {e}")))
    } else {
        toml::from_str(&text).map_err(|e| fail(format!("not a flat TOML string map: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_toml_and_json() {
        let dir = tempfile::tempdir().unwrap();
        let toml_path = dir.path().join("tags.toml");
        std::fs::write(&toml_path, "\"obstack:peer:loki\" = \"10.0.0.3\"\n").unwrap();
        assert_eq!(tags(&toml_path).unwrap()["obstack:peer:loki"], "10.0.0.3");
        let json_path = dir.path().join("tags.json");
        std::fs::write(&json_path, r#"{"obstack:peer:app": "10.0.0.4:5000"}"#).unwrap();
        assert_eq!(
            tags(&json_path).unwrap()["obstack:peer:app"],
            "10.0.0.4:5000"
        );
        std::fs::write(&json_path, r#"{"nested": {"a": 1}}"#).unwrap();
        assert!(tags(&json_path)
            .unwrap_err()
            .to_string()
            .contains("flat JSON"));
    }
}
