//! The HTTP APIs `verify` talks to: a base URL, Grafana's credentials when the API is
//! Grafana's (or reached through Grafana's datasource proxy), and small helpers for the
//! JSON answers of Prometheus, Loki and Grafana.

use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use crate::deploy::health::{describe_request_error, BasicAuth};

/// Per-request timeout: every API answers in well under a second when healthy.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One service's HTTP API.
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    auth: Option<BasicAuth>,
    http: reqwest::blocking::Client,
}

/// A response that arrived: its status and body, whatever the status.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    /// The `x-request-id` header, when there is one.
    pub request_id: Option<String>,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as JSON, whatever the status (Grafana explains errors in JSON).
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }

    /// The status and the start of the body, for a one-line error.
    pub fn excerpt(&self) -> String {
        let body: String = self.body.trim().chars().take(160).collect();
        format!("HTTP {}: {}", self.status, body.replace('\n', " "))
    }
}

impl Api {
    pub fn new(base: &str, auth: Option<BasicAuth>) -> anyhow::Result<Api> {
        let mut builder = reqwest::blocking::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT);
        // A local stack is on loopback: a proxy setting must not send it elsewhere.
        if base.starts_with("http://127.0.0.1") || base.starts_with("http://localhost") {
            builder = builder.no_proxy();
        }
        let http = builder.build().context("cannot build an HTTP client")?;
        Ok(Api {
            base: base.trim_end_matches('/').to_string(),
            auth,
            http,
        })
    }

    /// The API of the datasource `uid` through Grafana's datasource proxy, with Grafana's
    /// credentials: only Grafana needs to be reachable.
    pub fn via_grafana(grafana: &Api, uid: &str) -> Api {
        Api {
            base: format!("{}/api/datasources/proxy/uid/{uid}", grafana.base),
            auth: grafana.auth.clone(),
            http: grafana.http.clone(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET base+path?query` with `headers`; `Err` only when no answer came.
    pub fn get(
        &self,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Result<Answer, String> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.get(&url).query(query);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(auth) = &self.auth {
            request = request.basic_auth(&auth.user, Some(&auth.password));
        }
        let response = request
            .send()
            .map_err(|error| describe_request_error(&url, &error))?;
        let status = response.status().as_u16();
        let request_id = response
            .headers()
            .get("x-request-id")
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        let body = response
            .text()
            .map_err(|error| format!("{url}: cannot read the answer: {error}"))?;
        Ok(Answer {
            status,
            body,
            request_id,
        })
    }

    /// `GET` answering 2xx with JSON, else `Err` naming the URL and what came back.
    pub fn json(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, String> {
        let answer = self.get(path, query, &[])?;
        if !answer.is_success() {
            return Err(format!("{}{path} answered {}", self.base, answer.excerpt()));
        }
        answer
            .json()
            .ok_or_else(|| format!("{}{path} did not answer JSON", self.base))
    }

    /// `data` of a Prometheus-style answer (`{"status": "success", "data": ...}`), which
    /// Prometheus and Loki both give.
    pub fn data(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, String> {
        let body = self.json(path, query)?;
        match body["status"].as_str() {
            Some("success") => Ok(body["data"].clone()),
            _ => Err(format!(
                "{}{path}: {}",
                self.base,
                body["error"]
                    .as_str()
                    .unwrap_or("the answer is not a success")
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_api_keeps_grafanas_credentials_and_adds_the_datasource_path() {
        let grafana = Api::new(
            "http://grafana.example:3000/",
            Some(BasicAuth {
                user: "admin".into(),
                password: "secret".into(),
            }),
        )
        .unwrap();
        let prometheus = Api::via_grafana(&grafana, "prometheus");
        assert_eq!(
            prometheus.base(),
            "http://grafana.example:3000/api/datasources/proxy/uid/prometheus"
        );
        assert!(prometheus.auth.is_some());
    }
}
