//! The layer check of `cargo xtask lint`: every `crate::` path in gateway-userspace/src is an
//! edge between two top-level modules, and an edge may only point to a lower layer. DESIGN.md
//! explains the table; this file enforces it. Test code (`#[cfg(test)]` items) is not
//! counted: a test may build a neighbour to drive the module it tests.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    path::Path,
};

use anyhow::{Context as _, Result};

/// Top-level modules of gateway-userspace, lowest layer first. A module may use modules of
/// the layers below its own, never its own layer's neighbours or a layer above.
pub const LAYERS: &[(&str, &[&str])] = &[
    // Pure building blocks, no `crate::` imports: the accept-stage ban set, HTTP constants,
    // certificate loading, outgoing TLS client configs.
    ("leaves", &["guard", "http", "certs", "tls_client"]),
    ("config", &["config"]),
    // The admin API's wire types and their range checks (they reuse config's shapes).
    ("wire", &["api"]),
    // The host: the XDP loader and map driver (the firewall drives it), process limits.
    ("host", &["xdp", "rlimit"]),
    // Services talk to each other only through traits they define, wired by the daemon.
    ("services", &["firewall", "defend", "cluster", "proxy"]),
    ("control", &["control"]),
    // The composition root's adapters: each service's trait implemented by its neighbour.
    ("wiring", &["wiring"]),
    // The composition root: builds every service and passes the handles in.
    ("daemon", &["daemon"]),
    ("cli", &["cli"]),
];

/// Edges that break the table, each with why and who removes it. Empty: the table holds
/// everywhere, and no two top-level modules import each other. Keep it so; an entry is a
/// debt, and the check fails when a listed edge no longer occurs.
pub const ALLOWED: &[(&str, &str, &str)] = &[];

/// Which top-level module a source file belongs to (`None`: the crate root).
fn module_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

/// Source text without comments and without `#[cfg(test)]` items.
fn production_code(source: &str) -> String {
    let without_comments: String = source
        .lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = String::new();
    let mut rest = without_comments.as_str();
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        rest = skip_item(&rest[at + "#[cfg(test)]".len()..]);
    }
    out.push_str(rest);
    out
}

/// What follows the item at the start of `text`: up to its `;`, or its `{ ... }` block.
fn skip_item(text: &str) -> &str {
    let mut depth = 0usize;
    for (at, c) in text.char_indices() {
        match c {
            ';' if depth == 0 => return &text[at + 1..],
            '{' => depth += 1,
            '}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return &text[at + 1..];
                }
            }
            _ => {}
        }
    }
    ""
}

fn identifier(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The top-level modules named after each `crate::` in `code`, including every branch of a
/// `crate::{a::x, b}` group.
fn modules_used(code: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        if code[..at].ends_with('$') {
            continue;
        }
        let after = code[at + "crate::".len()..].trim_start();
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 0usize;
            let mut start_of_branch = true;
            for (index, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start_of_branch = true,
                    c if start_of_branch && !c.is_whitespace() => {
                        start_of_branch = false;
                        used.insert(identifier(&group[index..]).to_owned());
                    }
                    _ => {}
                }
            }
        } else {
            used.insert(identifier(after).to_owned());
        }
    }
    used.retain(|name| !name.is_empty() && name != "self");
    used
}

/// Module -> modules it uses (itself left out) -> files where it does.
pub type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// The edges between top-level modules in `files` (paths relative to src/, and their text).
pub fn graph<'a>(files: impl IntoIterator<Item = (String, &'a str)>) -> Graph {
    let mut graph = Graph::new();
    for (path, text) in files {
        let Some(from) = module_of(Path::new(&path)) else {
            continue;
        };
        let uses = graph.entry(from.clone()).or_default();
        for to in modules_used(&production_code(text)) {
            if to != from {
                uses.entry(to).or_default().insert(path.clone());
            }
        }
    }
    graph
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

const MAX_CYCLES_SHOWN: usize = 3;

/// What breaks the rules, one line each; empty when the graph keeps the table.
pub fn problems(graph: &Graph, allowed: &[(&str, &str, &str)]) -> Vec<String> {
    let mut problems = Vec::new();
    let is_allowed = |from: &str, to: &str| allowed.iter().any(|(a, b, _)| *a == from && *b == to);
    let downward = |from: &str, to: &str| match (layer_of(from), layer_of(to)) {
        (Some(from), Some(to)) => to < from,
        _ => false,
    };
    for (from, uses) in graph {
        let Some(from_layer) = layer_of(from) else {
            problems.push(format!(
                "module `{from}` is in no layer: add it to LAYERS in xtask/src/layers.rs and \
                 to the table in DESIGN.md"
            ));
            continue;
        };
        for (to, files) in uses {
            let Some(to_layer) = layer_of(to) else {
                continue; // an item of the crate root, or a module reported above
            };
            if to_layer < from_layer || is_allowed(from, to) {
                continue;
            }
            let files: Vec<&str> = files.iter().map(String::as_str).collect();
            let why = match to_layer == from_layer {
                true => "a neighbour in its own layer",
                false => "a layer above it",
            };
            problems.push(format!(
                "`{from}` ({}) uses `{to}` ({}), {why}, in {}",
                LAYERS[from_layer].0,
                LAYERS[to_layer].0,
                files.join(", ")
            ));
        }
    }
    for (from, to, _) in allowed {
        if !graph.get(*from).is_some_and(|uses| uses.contains_key(*to)) {
            problems.push(format!(
                "allowed edge `{from}` -> `{to}` no longer occurs: delete it from ALLOWED"
            ));
        }
    }
    // A cycle needs an edge up or sideways; one not allowed is reported above, and the
    // shortest few cycles through such edges show the knot it ties.
    let mut knots: Vec<Vec<String>> = cycles(graph)
        .into_iter()
        .filter(|cycle| {
            let mut edges = cycle.iter().zip(cycle.iter().cycle().skip(1));
            edges.any(|(from, to)| !downward(from, to) && !is_allowed(from, to))
        })
        .collect();
    knots.sort_by_key(Vec::len);
    let more = knots.len().saturating_sub(MAX_CYCLES_SHOWN);
    for cycle in knots.iter().take(MAX_CYCLES_SHOWN) {
        problems.push(format!(
            "import cycle: {} -> {}",
            cycle.join(" -> "),
            cycle[0]
        ));
    }
    if more > 0 {
        problems.push(format!("... and {more} more import cycles"));
    }
    problems
}

/// Every cycle found by a depth-first walk, each once (as the walk first closes it).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    fn walk(
        graph: &Graph,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<Vec<String>>,
    ) {
        if let Some(at) = path.iter().position(|seen| seen == node) {
            found.push(path[at..].to_vec());
            return;
        }
        if done.contains(node) {
            return;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flat_map(BTreeMap::keys) {
            walk(graph, next, path, done, found);
        }
        path.pop();
        done.insert(node.to_owned());
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        walk(graph, node, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

/// Reads every `.rs` file under `src` (relative paths, sorted).
fn sources(src: &Path) -> Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    let mut dirs = vec![src.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let relative = path.strip_prefix(src).expect("under src").to_string_lossy();
                found.push((relative.into_owned(), text));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The check `cargo xtask lint` runs: `Err` lists every problem.
pub fn check(src: &Path) -> Result<()> {
    let files = sources(src)?;
    let graph = graph(
        files
            .iter()
            .map(|(path, text)| (path.clone(), text.as_str())),
    );
    let problems = problems(&graph, ALLOWED);
    if problems.is_empty() {
        return Ok(());
    }
    let mut message = String::from("the layer table in DESIGN.md is broken:\n");
    for problem in problems {
        let _ = writeln!(message, "  - {problem}");
    }
    Err(anyhow::anyhow!(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph_of(files: &[(&str, &str)]) -> Graph {
        graph(files.iter().map(|(path, text)| (path.to_string(), *text)))
    }

    fn uses(graph: &Graph, from: &str) -> Vec<String> {
        graph[from].keys().cloned().collect()
    }

    #[test]
    fn finds_every_kind_of_crate_path() {
        let table = [
            ("use crate::config::Config;", vec!["config"]),
            (
                "use crate::{config::X, api::{A, B}};",
                vec!["api", "config"],
            ),
            (
                "use crate::{\n    config::{\n        a::{B, C},\n        D,\n    },\n    xdp,\n};",
                vec!["config", "xdp"],
            ),
            ("let x = crate::xdp::load();", vec!["xdp"]),
            ("fn f() -> crate::api::Stats { todo!() }", vec!["api"]),
            ("use crate::{self as root, config};", vec!["config"]),
            ("macro_rules! m { () => { $crate::xdp::x() } }", vec![]),
            ("// use crate::xdp::X;\n/// see [`crate::cli`]", vec![]),
            ("let a = 1; // crate::cli::run()", vec![]),
            (
                "use crate::proxy::Proxy; use crate::proxy::X;",
                vec!["proxy"],
            ),
        ];
        for (code, expected) in table {
            let graph = graph_of(&[("daemon.rs", code)]);
            assert_eq!(uses(&graph, "daemon"), expected, "{code}");
        }
    }

    #[test]
    fn test_code_and_own_module_are_not_edges() {
        let code = "use crate::config::C;\nuse crate::firewall::F;\n\
                    #[cfg(test)]\nmod tests {\n    use crate::cluster::X;\n    fn f() { { crate::xdp::y(); } }\n}\n\
                    #[cfg(test)]\nuse crate::{xdp, control};\n\
                    fn after() { crate::api::z() }";
        let graph = graph_of(&[("firewall/mod.rs", code), ("lib.rs", "pub mod cli;")]);
        assert_eq!(uses(&graph, "firewall"), ["api", "config"]);
        assert!(!graph.contains_key("lib"));
    }

    #[test]
    fn an_edge_down_passes_and_up_or_sideways_fails() {
        let table = [
            ("proxy/mod.rs", "use crate::config::X;", 0),
            ("daemon.rs", "use crate::{proxy, control, xdp};", 0),
            ("control/server.rs", "use crate::defend::Defender;", 0),
            ("config/mod.rs", "use crate::xdp::AttachMode;", 1),
            ("api/mod.rs", "use crate::control::X;", 1),
            ("proxy/mod.rs", "use crate::defend::report;", 1),
            ("xdp/mod.rs", "use crate::firewall::F;", 1),
            ("guard.rs", "use crate::config::C;", 1),
            ("control/mod.rs", "use crate::cli::C;", 1),
        ];
        for (path, code, expected) in table {
            let problems = problems(&graph_of(&[(path, code)]), &[]);
            assert_eq!(problems.len(), expected, "{path}: {code}: {problems:?}");
        }
    }

    #[test]
    fn allowed_edges_pass_and_stale_ones_fail() {
        let graph = graph_of(&[("proxy/mod.rs", "use crate::defend::report;")]);
        assert!(problems(&graph, &[("proxy", "defend", "why")]).is_empty());
        let stale = problems(&graph, &[("proxy", "defend", ""), ("xdp", "cli", "")]);
        assert_eq!(stale.len(), 1, "{stale:?}");
        assert!(stale[0].contains("`xdp` -> `cli`"), "{stale:?}");
    }

    #[test]
    fn unknown_modules_and_cycles_are_reported() {
        let graph = graph_of(&[("newthing/mod.rs", "use crate::config::C;")]);
        let found = problems(&graph, &[]);
        assert!(found[0].contains("`newthing` is in no layer"), "{found:?}");

        let graph = graph_of(&[
            ("defend/mod.rs", "use crate::firewall::F;"),
            ("firewall/mod.rs", "use crate::defend::D;"),
        ]);
        let found = problems(&graph, &[("defend", "firewall", "")]);
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("import cycle: defend -> firewall")),
            "{found:?}"
        );
        // A cycle made only of accepted edges is already listed: not reported again.
        let accepted = [("defend", "firewall", ""), ("firewall", "defend", "")];
        assert!(problems(&graph, &accepted).is_empty());
    }

    #[test]
    fn the_table_names_each_module_once() {
        let mut seen = BTreeSet::new();
        for (_, modules) in LAYERS {
            for module in *modules {
                assert!(seen.insert(*module), "{module} is in two layers");
            }
        }
        for (from, to, why) in ALLOWED {
            assert!(layer_of(from).is_some() && layer_of(to).is_some() && !why.is_empty());
        }
    }
}
