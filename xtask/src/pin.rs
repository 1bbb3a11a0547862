//! `cargo xtask pin [COMPONENT[@VERSION]]... [--check]`: reads each release's published
//! checksum file and rewrites images/versions.toml in place, comments and layout kept, so a
//! pin always comes from upstream and never from a hash computed (or guessed) by hand.
//!
//! Everything is fetched and checked before the manifest is touched: a failure leaves it as
//! it was. `--check` is offline and only reports entries without a verified checksum.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use toml_edit::DocumentMut;

use crate::cli::PinArgs;
use crate::versions::{is_sha256_hex, Component, Manifest, ARCHES, UNVERIFIED};

/// The architecture the images are baked for: without a verified sum here a real bake refuses
/// the component. Other architectures are pinned when upstream publishes them.
const BAKED_ARCH: &str = "amd64";

pub fn run(args: PinArgs) -> anyhow::Result<()> {
    let path = Manifest::path();
    let manifest = Manifest::load(&path)?;
    if args.check {
        return check(&manifest);
    }
    let targets = parse_targets(&args.components, &manifest)?;
    let pins = pin_file(&path, &targets, &HttpFetcher::new()?)?;
    for pin in &pins {
        let sums: Vec<String> = pin
            .sha256
            .iter()
            .map(|(arch, sum)| format!("{arch} {}", sum.as_deref().unwrap_or(UNVERIFIED)))
            .collect();
        println!("{} {}: {}", pin.name, pin.version, sums.join(", "));
    }
    println!("updated {}", path.display());
    Ok(())
}

/// What the user asked to pin: a component, at a version or at its current one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub version: Option<String>,
}

/// `NAME` or `NAME@VERSION`, for components the manifest knows; none means all of them.
pub fn parse_targets(specs: &[String], manifest: &Manifest) -> anyhow::Result<Vec<Target>> {
    if specs.is_empty() {
        return Ok(manifest
            .components
            .keys()
            .map(|name| Target {
                name: name.clone(),
                version: None,
            })
            .collect());
    }
    let known = || {
        manifest
            .components
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut targets: Vec<Target> = Vec::new();
    for spec in specs {
        let (name, version) = match spec.split_once('@') {
            Some((name, version)) => (name, Some(version)),
            None => (spec.as_str(), None),
        };
        if !manifest.components.contains_key(name) {
            bail!(
                "unknown component `{name}`; images/versions.toml has: {}",
                known()
            );
        }
        if let Some(version) = version {
            let valid = !version.is_empty()
                && version
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c));
            if !valid {
                bail!("`{spec}`: give a version like {name}@1.2.3 (without a leading v)");
            }
        }
        if targets.iter().any(|t| t.name == name) {
            bail!("`{name}` is named twice; pin each component once");
        }
        targets.push(Target {
            name: name.to_string(),
            version: version.map(str::to_string),
        });
    }
    Ok(targets)
}

/// A component's new pin: its version and, per architecture, the published SHA-256 (None
/// where upstream publishes none, written as "unverified").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub name: String,
    pub version: String,
    pub sha256: BTreeMap<String, Option<String>>,
}

/// Reads a URL's text. `Ok(None)` means the server says it does not exist (HTTP 404).
pub trait Fetch {
    fn fetch(&self, url: &str) -> anyhow::Result<Option<String>>;
}

pub struct HttpFetcher {
    client: reqwest::blocking::Client,
}

impl HttpFetcher {
    pub fn new() -> anyhow::Result<HttpFetcher> {
        let client = reqwest::blocking::Client::builder()
            .user_agent(concat!("obstack-xtask-pin/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(15))
            .timeout(Duration::from_secs(60))
            .build()
            .context("cannot build an HTTP client")?;
        Ok(HttpFetcher { client })
    }
}

impl Fetch for HttpFetcher {
    fn fetch(&self, url: &str) -> anyhow::Result<Option<String>> {
        let response = self
            .client
            .get(url)
            .send()
            .with_context(|| format!("cannot fetch {url}; pin needs internet access"))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = response
            .error_for_status()
            .with_context(|| format!("fetching {url} failed"))?;
        let text = response
            .text()
            .with_context(|| format!("cannot read {url}"))?;
        Ok(Some(text))
    }
}

/// Resolves every target against upstream and rewrites the manifest at `path` once, only if
/// all of them resolved.
pub fn pin_file(path: &Path, targets: &[Target], fetcher: &dyn Fetch) -> anyhow::Result<Vec<Pin>> {
    let manifest = Manifest::load(path)?;
    let mut cache: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut pins = Vec::new();
    for target in targets {
        let Some(component) = manifest.components.get(&target.name) else {
            bail!("unknown component `{}` in {}", target.name, path.display());
        };
        pins.push(resolve(
            &target.name,
            component,
            target.version.as_deref(),
            fetcher,
            &mut cache,
        )?);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let updated = rewrite(&text, &pins)?;
    crate::atomic::write(path, &updated)?;
    Ok(pins)
}

fn resolve(
    name: &str,
    current: &Component,
    version: Option<&str>,
    fetcher: &dyn Fetch,
    cache: &mut BTreeMap<String, Option<String>>,
) -> anyhow::Result<Pin> {
    let mut component = current.clone();
    if let Some(version) = version {
        component.version = version.to_string();
    }
    let mut sha256 = BTreeMap::new();
    for arch in ARCHES {
        let url = component.checksums_url_for(arch);
        if !cache.contains_key(&url) {
            let text = fetcher.fetch(&url)?;
            cache.insert(url.clone(), text);
        }
        let file = component.download_file_name(arch);
        let sum = cache[&url]
            .as_deref()
            .and_then(|text| find_checksum(text, &file, component.checksums_per_arch()));
        if sum.is_none() {
            eprintln!(
                "warning: {name} {}: no published SHA-256 for {file} at {url}; \
                       {arch} stays {UNVERIFIED}",
                component.version
            );
        }
        sha256.insert(arch.to_string(), sum);
    }
    if sha256.get(BAKED_ARCH).is_some_and(Option::is_none) {
        bail!(
            "{name} {}: upstream publishes no SHA-256 for {} (checked {}); does that version \
             exist? Nothing was changed",
            component.version,
            component.download_file_name(BAKED_ARCH),
            component.checksums_url_for(BAKED_ARCH)
        );
    }
    Ok(Pin {
        name: name.to_string(),
        version: component.version,
        sha256,
    })
}

/// The SHA-256 of `file` in a checksum file: `sha256sum` lines (`<hash>  <name>`, `*` for
/// binary mode), or, for a file published per download (`per_download`), a bare hash.
pub fn find_checksum(text: &str, file: &str, per_download: bool) -> Option<String> {
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(hash), Some(name)) = (fields.next(), fields.next()) else {
            continue;
        };
        let name = name.trim_start_matches('*').trim_start_matches("./");
        let hash = hash.to_ascii_lowercase();
        if name == file && is_sha256_hex(&hash) {
            return Some(hash);
        }
    }
    let mut tokens = text.split_whitespace();
    match (tokens.next(), tokens.next()) {
        (Some(hash), None) if per_download => {
            let hash = hash.to_ascii_lowercase();
            is_sha256_hex(&hash).then_some(hash)
        }
        _ => None,
    }
}

/// The manifest text with the pins applied, everything else (comments, order, other
/// components) as it was.
pub fn rewrite(text: &str, pins: &[Pin]) -> anyhow::Result<String> {
    let mut document: DocumentMut = text.parse().context("images/versions.toml is not TOML")?;
    for pin in pins {
        let entry = &mut document["components"][pin.name.as_str()];
        if entry.is_none() {
            bail!("images/versions.toml has no [components.{}]", pin.name);
        }
        entry["version"] = toml_edit::value(pin.version.as_str());
        for (arch, sum) in &pin.sha256 {
            entry["sha256"][arch.as_str()] = toml_edit::value(sum.as_deref().unwrap_or(UNVERIFIED));
        }
    }
    let updated = document.to_string();
    // Never write a manifest the bake could not read back.
    toml::from_str::<Manifest>(&updated).context("the rewritten manifest does not parse")?;
    Ok(updated)
}

/// `--check`: every entry without a verified checksum. Fails when the baked architecture has
/// one, because a real bake would refuse it.
fn check(manifest: &Manifest) -> anyhow::Result<()> {
    let mut blocking = Vec::new();
    for (name, component) in &manifest.components {
        for arch in ARCHES {
            if component.verified_sha256(name, arch).is_err() {
                println!("{name} {} {arch}: {UNVERIFIED}", component.version);
                if arch == BAKED_ARCH {
                    blocking.push(format!("{name}@{}", component.version));
                }
            }
        }
        if let Some(note) = &component.note {
            println!("{name} {}: note: {note}", component.version);
        }
    }
    if !blocking.is_empty() {
        bail!(
            "{} has no verified {BAKED_ARCH} SHA-256, so a real bake refuses it; run \
             `cargo xtask pin {}` on a machine with internet access",
            blocking.join(", "),
            blocking.join(" ")
        );
    }
    println!(
        "every {BAKED_ARCH} download (the architecture the images bake) has a verified SHA-256"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use testkit::http::TestServer;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

    /// Serves `files` (path -> body) on a free 127.0.0.1 port and 404 for anything else.
    fn serve(files: Vec<(&'static str, String)>) -> TestServer {
        TestServer::files(
            files
                .into_iter()
                .map(|(path, body)| (path.to_string(), body.into_bytes()))
                .collect(),
        )
    }

    fn manifest_text(base: &str) -> String {
        format!(
            r#"# Header comment that must survive.

[components.tool]
# Why tool is pinned here.
version = "1.0.0"
roles = ["app"]
url = "https://example.invalid/v{{version}}/tool-{{version}}.linux-{{arch}}.tar.gz"
checksums_url = "{base}/v{{version}}/sha256sums.txt"
sha256 = {{ amd64 = "unverified", arm64 = "unverified" }}

[components.ui]
version = "2.0.0"
roles = ["grafana"]
url = "https://example.invalid/{{version}}/ui_{{version}}_linux_{{arch}}.tar.gz"
checksums_url = "{base}/{{version}}/ui_{{version}}_linux_{{arch}}.tar.gz.sha256"
sha256 = {{ amd64 = "{C}", arm64 = "unverified" }}
"#
        )
    }

    fn manifest_with(base: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("versions.toml");
        std::fs::write(&path, manifest_text(base)).unwrap();
        (dir, path)
    }

    #[test]
    fn finds_the_exact_file_in_a_sha256sums_file() {
        let sums = format!(
            "{A}  tool-1.1.0.linux-amd64.tar.gz.sbom\n{B}  tool-1.1.0.linux-amd64.tar.gz\n\
             {C} *tool-1.1.0.linux-arm64.tar.gz\n"
        );
        assert_eq!(
            find_checksum(&sums, "tool-1.1.0.linux-amd64.tar.gz", false),
            Some(B.into())
        );
        assert_eq!(
            find_checksum(&sums, "tool-1.1.0.linux-arm64.tar.gz", false),
            Some(C.into())
        );
        assert_eq!(
            find_checksum(&sums, "tool-1.1.0.linux-386.tar.gz", false),
            None
        );
        let upper = format!("{}  x.zip\n", B.to_uppercase());
        assert_eq!(find_checksum(&upper, "x.zip", false), Some(B.into()));
    }

    #[test]
    fn a_bare_hash_counts_only_for_a_per_download_file() {
        assert_eq!(
            find_checksum(&format!("{A}\n"), "ui.tar.gz", true),
            Some(A.into())
        );
        assert_eq!(find_checksum(&format!("{A}\n"), "ui.tar.gz", false), None);
        assert_eq!(find_checksum("not a hash\n", "ui.tar.gz", true), None);
        assert_eq!(find_checksum("<html>404</html>", "ui.tar.gz", true), None);
    }

    #[test]
    fn targets_name_known_components_once_with_sane_versions() {
        let manifest: Manifest = toml::from_str(&manifest_text("http://x")).unwrap();
        let all = parse_targets(&[], &manifest).unwrap();
        assert_eq!(
            all.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["tool", "ui"]
        );
        let one = parse_targets(&["tool@1.1.0".into()], &manifest).unwrap();
        assert_eq!(
            one,
            [Target {
                name: "tool".into(),
                version: Some("1.1.0".into())
            }]
        );
        let error = parse_targets(&["nope".into()], &manifest)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("unknown component `nope`") && error.contains("tool, ui"),
            "{error}"
        );
        assert!(parse_targets(&["tool@".into()], &manifest).is_err());
        assert!(parse_targets(&["tool@1.0/../x".into()], &manifest).is_err());
        assert!(parse_targets(&["tool".into(), "tool@2".into()], &manifest).is_err());
    }

    #[test]
    fn pins_from_a_served_checksum_file_and_keeps_the_rest_of_the_manifest() {
        let base = serve(vec![
            (
                "/v1.1.0/sha256sums.txt",
                format!("{A}  tool-1.1.0.linux-amd64.tar.gz\n{B}  tool-1.1.0.linux-arm64.tar.gz\n"),
            ),
            (
                "/2.0.0/ui_2.0.0_linux_amd64.tar.gz.sha256",
                format!("{C}\n"),
            ),
        ]);
        let (_dir, path) = manifest_with(base.url());
        let targets = vec![
            Target {
                name: "tool".into(),
                version: Some("1.1.0".into()),
            },
            Target {
                name: "ui".into(),
                version: None,
            },
        ];
        let pins = pin_file(&path, &targets, &HttpFetcher::new().unwrap()).unwrap();
        assert_eq!(pins[0].sha256["amd64"].as_deref(), Some(A));
        assert_eq!(
            pins[1].sha256["arm64"], None,
            "ui publishes no arm64 file (404)"
        );

        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# Header comment that must survive."),
            "{text}"
        );
        assert!(text.contains("# Why tool is pinned here."), "{text}");
        let manifest = Manifest::load(&path).unwrap();
        let tool = &manifest.components["tool"];
        assert_eq!(tool.version, "1.1.0");
        assert_eq!(tool.verified_sha256("tool", "amd64").unwrap(), A);
        assert_eq!(tool.verified_sha256("tool", "arm64").unwrap(), B);
        let ui = &manifest.components["ui"];
        assert_eq!(ui.verified_sha256("ui", "amd64").unwrap(), C);
        assert!(ui.verified_sha256("ui", "arm64").is_err());
    }

    #[test]
    fn a_version_upstream_does_not_publish_changes_nothing() {
        let base = serve(vec![(
            "/v9.9.9/sha256sums.txt",
            format!("{A}  tool-9.9.9.linux-arm64.tar.gz\n"),
        )]);
        let (_dir, path) = manifest_with(base.url());
        let before = std::fs::read_to_string(&path).unwrap();
        for version in ["9.9.9", "8.8.8"] {
            let targets = [Target {
                name: "tool".into(),
                version: Some(version.into()),
            }];
            let error = pin_file(&path, &targets, &HttpFetcher::new().unwrap()).unwrap_err();
            assert!(error.to_string().contains("no SHA-256"), "{error:#}");
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
    }

    #[test]
    fn an_unreachable_server_is_an_error_not_an_unverified_pin() {
        let port = testkit::free_port();
        let (_dir, path) = manifest_with(&format!("http://127.0.0.1:{port}"));
        let before = std::fs::read_to_string(&path).unwrap();
        let targets = [Target {
            name: "tool".into(),
            version: None,
        }];
        assert!(pin_file(&path, &targets, &HttpFetcher::new().unwrap()).is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
    }

    #[test]
    fn the_checked_in_manifest_verifies_every_baked_download() {
        let manifest = Manifest::load(&Manifest::path()).unwrap();
        check(&manifest).unwrap();
        let mut broken = manifest.clone();
        broken
            .components
            .values_mut()
            .next()
            .unwrap()
            .sha256
            .insert("amd64".into(), UNVERIFIED.into());
        let error = check(&broken).unwrap_err().to_string();
        assert!(error.contains("cargo xtask pin"), "{error}");
    }
}
