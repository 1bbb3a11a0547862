//! What `verify` found: one row per check, printed as an aligned table or as JSON, and
//! the verdict over all of them.

use serde::Serialize;

/// The result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Ok,
    Failed,
    /// The component is not there (not running locally, not reachable from here).
    NotChecked,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Failed => "FAILED",
            Verdict::NotChecked => "not checked",
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub check: String,
    pub component: String,
    pub verdict: Verdict,
    pub detail: String,
}

impl Row {
    pub fn new(check: &str, component: &str, verdict: Verdict, detail: impl Into<String>) -> Row {
        Row {
            check: check.to_string(),
            component: component.to_string(),
            verdict,
            detail: detail.into(),
        }
    }

    pub fn ok(check: &str, component: &str, detail: impl Into<String>) -> Row {
        Row::new(check, component, Verdict::Ok, detail)
    }

    pub fn failed(check: &str, component: &str, detail: impl Into<String>) -> Row {
        Row::new(check, component, Verdict::Failed, detail)
    }

    pub fn not_checked(check: &str, component: &str, detail: impl Into<String>) -> Row {
        Row::new(check, component, Verdict::NotChecked, detail)
    }

    /// `Ok(detail)` or `Err(reason)` as a row.
    pub fn from_result(check: &str, component: &str, result: Result<String, String>) -> Row {
        match result {
            Ok(detail) => Row::ok(check, component, detail),
            Err(reason) => Row::failed(check, component, reason),
        }
    }
}

/// Every row, with what was verified and how long it took.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `local` or `deployed`.
    pub target: String,
    pub passed: bool,
    pub require_all: bool,
    pub elapsed_seconds: f64,
    /// From the test request to its log line being found in Loki, when it was.
    pub log_found_after_seconds: Option<f64>,
    pub checks: Vec<Row>,
}

impl Report {
    pub fn new(
        target: &str,
        checks: Vec<Row>,
        require_all: bool,
        elapsed: std::time::Duration,
        log_found_after: Option<std::time::Duration>,
    ) -> Report {
        let passed = verdict(&checks, require_all).is_ok();
        Report {
            target: target.to_string(),
            passed,
            require_all,
            elapsed_seconds: elapsed.as_secs_f64(),
            log_found_after_seconds: log_found_after.map(|d| d.as_secs_f64()),
            checks,
        }
    }

    pub fn table(&self) -> String {
        crate::table::render(
            &["CHECK", "COMPONENT", "RESULT", "DETAIL"],
            self.checks.iter().map(|row| {
                [
                    row.check.clone(),
                    row.component.clone(),
                    row.verdict.label().to_string(),
                    row.detail.clone(),
                ]
            }),
        )
    }
}

/// `Ok` when nothing failed (and, with `require_all`, everything was checked); otherwise
/// one line naming the checks that did not pass.
pub fn verdict(checks: &[Row], require_all: bool) -> Result<(), String> {
    let failed: Vec<&str> = checks
        .iter()
        .filter(|row| row.verdict == Verdict::Failed)
        .map(|row| row.check.as_str())
        .collect();
    let unchecked: Vec<&str> = checks
        .iter()
        .filter(|row| row.verdict == Verdict::NotChecked)
        .map(|row| row.check.as_str())
        .collect();
    let mut problems = Vec::new();
    if !failed.is_empty() {
        problems.push(format!(
            "{} failed ({})",
            count(failed.len()),
            failed.join(", ")
        ));
    }
    if require_all && !unchecked.is_empty() {
        problems.push(format!(
            "{} not checked with --require-all ({})",
            count(unchecked.len()),
            unchecked.join(", ")
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

fn count(n: usize) -> String {
    format!("{n} {}", if n == 1 { "check" } else { "checks" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_fails_and_not_checked_fails_only_with_require_all() {
        let rows = vec![
            Row::ok("app answers", "app", "200"),
            Row::not_checked("grafana health", "grafana", "grafana does not run"),
        ];
        assert!(verdict(&rows, false).is_ok());
        let error = verdict(&rows, true).unwrap_err();
        assert!(
            error.contains("1 check not checked with --require-all (grafana health)"),
            "{error}"
        );
        let mut rows = rows;
        rows.push(Row::failed("rules", "prometheus", "broken"));
        assert_eq!(verdict(&rows, false).unwrap_err(), "1 check failed (rules)");
    }

    #[test]
    fn the_table_lines_up_and_says_not_checked() {
        let report = Report::new(
            "local",
            vec![
                Row::ok("app answers", "app", "GET /health 200"),
                Row::not_checked("log line in loki", "loki", "loki does not run"),
            ],
            false,
            std::time::Duration::from_secs(1),
            None,
        );
        let table = report.table();
        let lines: Vec<&str> = table.lines().collect();
        let column = lines[0].find("RESULT").unwrap();
        assert_eq!(lines[1].find("ok"), Some(column), "{table}");
        assert_eq!(lines[2].find("not checked"), Some(column), "{table}");
        assert!(report.passed);
    }
}
