//! ARCHITECTURE.md tells the truth about the crate graph: its `crate-graph` table is
//! compared with what `cargo metadata` says each workspace crate depends on.

use std::collections::{BTreeMap, BTreeSet};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The table in ARCHITECTURE.md's ```` ```text crate-graph ```` block.
fn stated() -> Graph {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let start = text
        .find("```text crate-graph\n")
        .expect("ARCHITECTURE.md has a crate-graph block");
    let block = &text[start + "```text crate-graph\n".len()..];
    let block = &block[..block.find("```").unwrap()];
    block
        .lines()
        .map(|line| {
            let (name, deps) = line.split_once('→').unwrap_or_else(|| panic!("{line:?}"));
            (
                name.trim().to_owned(),
                deps.split(',')
                    .map(|d| d.trim().to_owned())
                    .filter(|d| !d.is_empty())
                    .collect(),
            )
        })
        .collect()
}

/// Each workspace crate's normal and build dependencies on other workspace crates.
fn actual() -> Graph {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let names: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].is_null() || d["kind"] == "build")
                .map(|d| d["name"].as_str().unwrap().to_owned())
                .filter(|d| names.contains(d))
                .collect();
            (p["name"].as_str().unwrap().to_owned(), deps)
        })
        .collect()
}

#[test]
fn the_crate_graph_is_the_one_this_file_states() {
    let (stated, actual) = (stated(), actual());
    assert_eq!(
        stated, actual,
        "ARCHITECTURE.md's crate-graph table and Cargo.toml disagree; fix the one that is wrong"
    );
    // And the stated order is a one-way order: each crate names only crates above it.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let block = &text[text.find("```text crate-graph\n").unwrap()..];
    let order: Vec<&str> = block
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .map(|l| l.split('→').next().unwrap().trim())
        .collect();
    for (i, name) in order.iter().enumerate() {
        for dep in &stated[*name] {
            let at = order.iter().position(|o| o == dep).unwrap();
            assert!(at < i, "{name} depends on {dep}, which comes after it");
        }
    }
}
