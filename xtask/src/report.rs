//! How errors reach a person: one line, the outermost context first, each cause after a
//! colon, and no cause repeated when a wrapper already quoted it.

/// `error` and its causes on one line: `cannot deploy: terraform apply failed: exit 1`.
pub fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        let text = text.trim();
        // Some libraries repeat their source in their own message: say it once.
        if text.is_empty() || line.contains(text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(text);
    }
    // A message spanning lines (a tool's stderr) is folded so the error stays one line.
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::*;

    #[test]
    fn causes_are_joined_once_on_one_line() {
        let io = std::io::Error::other("disk\nfull");
        let error = Err::<(), _>(io)
            .context("cannot write state.json")
            .context("cannot start the stack")
            .unwrap_err();
        assert_eq!(
            one_line(&error),
            "cannot start the stack: cannot write state.json: disk full"
        );
        let repeated = anyhow::anyhow!("exit 1").context("terraform failed: exit 1");
        assert_eq!(one_line(&repeated), "terraform failed: exit 1");
    }
}
