//! What a Slack incoming webhook accepts, and how it answers: `cargo xtask up`'s local alert
//! receiver stands in for one, and so do the tests' receivers, so a config that would post
//! something Slack refuses fails here too.
//!
//! Slack answers a message with `200 ok` (text/plain); a body that is not JSON with `400
//! invalid_payload`; JSON without text with `400 no_text` (api.slack.com, "Handling errors"
//! of incoming webhooks). Alertmanager does not retry a 4xx. The text may be the top-level
//! `text` (Alertmanager's `message_text`, 0.31 and later) or an attachment's `text`
//! (`slack_configs.text`, every version). Slack also takes a message whose only content is an
//! attachment's `fallback` or `blocks`: the stand-in is stricter there, since the stack
//! always sends a text.

use serde_json::Value;

/// A message Slack would show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The top-level `text`, possibly empty.
    pub text: String,
    pub attachments: Vec<Attachment>,
}

/// One legacy attachment, the part of a message `slack_configs` fills.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attachment {
    pub title: String,
    pub title_link: String,
    pub text: String,
    pub fallback: String,
    pub color: String,
}

/// Slack's answer to a message it refuses: a 4xx status and a one-word body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub error: &'static str,
}

/// The body Slack answers an accepted message with.
pub const ACCEPTED: &str = "ok";

/// Reads a POSTed body as Slack does: the message it would show, or its refusal.
pub fn receive(body: &[u8]) -> Result<Message, Refusal> {
    let invalid = Refusal {
        status: 400,
        error: "invalid_payload",
    };
    let json: Value = serde_json::from_slice(body).map_err(|_| invalid)?;
    if !json.is_object() {
        return Err(invalid);
    }
    let text = |value: &Value| value.as_str().unwrap_or_default().to_string();
    let message = Message {
        text: text(&json["text"]),
        attachments: json["attachments"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| Attachment {
                title: text(&a["title"]),
                title_link: text(&a["title_link"]),
                text: text(&a["text"]),
                fallback: text(&a["fallback"]),
                color: text(&a["color"]),
            })
            .collect(),
    };
    if message.all_text().trim().is_empty() {
        return Err(Refusal {
            status: 400,
            error: "no_text",
        });
    }
    Ok(message)
}

impl Message {
    /// Every text a person reads: the top-level text, then each attachment's text.
    pub fn all_text(&self) -> String {
        std::iter::once(self.text.as_str())
            .chain(self.attachments.iter().map(|a| a.text.as_str()))
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The message as lines for a terminal: each attachment's title, then the texts,
    /// indented.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if !self.text.is_empty() {
            lines.extend(self.text.lines().map(str::to_string));
        }
        for attachment in &self.attachments {
            if !attachment.title.is_empty() {
                lines.push(attachment.title.clone());
            }
            lines.extend(
                attachment
                    .text
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| format!("  {l}")),
            );
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_with_text_is_accepted_anywhere_slack_reads_it() {
        let top = receive(br#"{"text":"AppDown is firing"}"#).unwrap();
        assert_eq!(top.all_text(), "AppDown is firing");
        let attached = receive(
            br#"{"attachments":[{"title":"[FIRING:1] AppDown","text":"*AppDown* is firing\n\n","color":"danger"}]}"#,
        )
        .unwrap();
        assert_eq!(attached.attachments[0].color, "danger");
        assert_eq!(
            attached.lines(),
            ["[FIRING:1] AppDown", "  *AppDown* is firing"]
        );
    }

    #[test]
    fn alertmanagers_webhook_json_is_refused_with_no_text() {
        // What webhook_configs posts: no `text` anywhere.
        let webhook = br#"{"version":"4","groupKey":"{}:{}","status":"firing","receiver":"page",
            "alerts":[{"status":"firing","labels":{"alertname":"AppDown"}}]}"#;
        assert_eq!(
            receive(webhook),
            Err(Refusal {
                status: 400,
                error: "no_text"
            })
        );
        for empty in [
            &br#"{"text":""}"#[..],
            br#"{"attachments":[{"title":"t","text":"  ","fallback":"f"}]}"#,
        ] {
            assert_eq!(receive(empty).unwrap_err().error, "no_text");
        }
        for garbage in [&b"payload=x"[..], b"[1]", b""] {
            assert_eq!(receive(garbage).unwrap_err().error, "invalid_payload");
        }
    }
}
