//! `cargo xtask images`: the project's AMIs per role, with their input hash, date, size and
//! whether any instance uses them.

use anyhow::Context;
use serde::Serialize;

use crate::ami;
use crate::cli::ImagesArgs;

#[derive(Debug, Serialize)]
struct Row {
    role: String,
    ami_id: String,
    name: String,
    input_hash: String,
    git_revision: Option<String>,
    created: String,
    size_gib: i64,
    in_use: bool,
}

pub fn run(args: ImagesArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let rows = runtime.block_on(async {
        let client = ami::ec2_client(args.region.as_deref()).await?;
        let amis = ami::list(&client, None).await?;
        let used = ami::in_use(&client).await?;
        anyhow::Ok(rows(amis, &used))
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if rows.is_empty() {
        println!("no obstack AMIs in this account and region; bake some with `cargo xtask bake`");
    } else {
        print!("{}", table(&rows));
    }
    Ok(())
}

/// Rows grouped by role (in the project's role order), newest first within a role.
fn rows(amis: Vec<ami::Ami>, used: &std::collections::BTreeSet<String>) -> Vec<Row> {
    // An AMI of a role this checkout no longer has sorts last rather than failing the list.
    let names = crate::roles::Registry::load_default()
        .map(|registry| {
            registry
                .names()
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let order = |role: &str| names.iter().position(|r| *r == role).unwrap_or(usize::MAX);
    let mut rows: Vec<Row> = amis
        .into_iter()
        .map(|a| Row {
            in_use: used.contains(&a.id),
            role: a.role,
            ami_id: a.id,
            name: a.name,
            input_hash: a.input_hash,
            git_revision: a.git_revision,
            created: a.created,
            size_gib: a.size_gib,
        })
        .collect();
    // Stable: keeps newest-first within a role.
    rows.sort_by_key(|r| order(&r.role));
    rows
}

fn table(rows: &[Row]) -> String {
    crate::table::render(
        &["ROLE", "AMI", "HASH", "CREATED", "SIZE", "IN USE"],
        rows.iter().map(|r| {
            [
                r.role.clone(),
                r.ami_id.clone(),
                r.input_hash.chars().take(12).collect(),
                r.created.clone(),
                format!("{} GiB", r.size_gib),
                if r.in_use { "yes" } else { "no" }.to_string(),
            ]
        }),
    )
}
