//! Dependencies point one way: the layering that `src/lib.rs`'s docs state holds for every
//! `crate::` path between the library's top-level modules, and no two files of `src/cli/` use
//! each other, directly or through others. The maps stay true too: `lib.rs`'s table has a row
//! for every module, and README's "Where things are" names only paths that exist.
//!
//! Read from the source text, not from the compiler: a path is a use wherever it appears in
//! code (comments are skipped, so a doc link to an upper layer is not one). The library's
//! paths are `crate::module::…`, `crate::{a, b::…}` and the names `lib.rs` re-exports
//! (`crate::Config` is `config`); the binary's are `super::…` and `crate::cli::…` between the
//! files of `src/cli/` (its `mod.rs` uses every file it declares).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Where a use was seen: file and line.
type Seen = Vec<String>;
/// Module → modules it uses → where.
type Graph = BTreeMap<String, BTreeMap<String, Seen>>;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a line, without its comment (`//`, `///`, `//!`).
fn code(line: &str) -> &str {
    line.find("//").map_or(line, |at| &line[..at])
}

fn ident_at(text: &str) -> Option<&str> {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    (end > 0).then(|| &text[..end])
}

/// The first name of each path after `prefix` in `text`: `prefix` `a::b` gives `a`, and
/// `prefix` `{a::b, c}` gives `a` and `c`.
fn names_after(text: &str, prefix: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut from = 0;
    while let Some(found) = text[from..].find(prefix) {
        let at = from + found;
        let before = &text[..at];
        let rest = &text[at + prefix.len()..];
        from = at + prefix.len();
        // Inside a longer path (`super::super::x` read from its first `super::` only), or the
        // end of a longer name.
        if before.ends_with("::") || before.ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        names.extend(ident_at(item.trim()).map(str::to_owned));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            names.extend(ident_at(item.trim()).map(str::to_owned));
        } else if let Some(name) = ident_at(rest) {
            names.push(name.to_owned());
        }
    }
    names
}

/// The lines of a file without their comments, each with its number.
fn code_lines(path: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(path).expect("read source");
    text.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, code(line).to_owned()))
        .collect()
}

/// The code of a file as statements enough for paths: a `use` group over several lines is
/// joined from its `{` to its `}`; everything else is read line by line.
fn statements(path: &Path) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    let mut open: Option<(usize, String, i32)> = None;
    for (number, line) in code_lines(path) {
        if let Some((start, mut text, mut depth)) = open.take() {
            depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
            text.push(' ');
            text.push_str(line.trim());
            if depth <= 0 {
                out.push((start, text));
            } else {
                open = Some((start, text, depth));
            }
            continue;
        }
        let trimmed = line.trim_start();
        let unscoped = ["pub(crate) ", "pub(super) ", "pub "]
            .iter()
            .find_map(|visibility| trimmed.strip_prefix(visibility))
            .unwrap_or(trimmed);
        let depth = line.matches('{').count() as i32 - line.matches('}').count() as i32;
        if unscoped.starts_with("use ") && depth > 0 {
            open = Some((number, line.trim().to_owned(), depth));
        } else {
            out.push((number, line));
        }
    }
    out
}

fn add(graph: &mut Graph, from: &str, to: &str, at: String) {
    if from != to {
        graph
            .entry(from.to_owned())
            .or_default()
            .entry(to.to_owned())
            .or_default()
            .push(at);
    }
}

/// The top-level module a file of the library belongs to (`src/sink/file.rs` is `sink`).
fn top_module(path: &Path, root: &Path) -> String {
    let first = path
        .strip_prefix(root)
        .expect("under the root")
        .components()
        .next()
        .expect("a component");
    let name = first.as_os_str().to_string_lossy();
    name.strip_suffix(".rs").unwrap_or(&name).to_owned()
}

fn relative(path: &Path) -> String {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The library's modules, and what each uses.
fn library_graph() -> (BTreeSet<String>, Graph) {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.retain(|f| {
        let top = top_module(f, &root);
        top != "lib" && top != "main" && top != "cli"
    });
    let modules: BTreeSet<String> = files.iter().map(|f| top_module(f, &root)).collect();
    // What lib.rs re-exports: `pub use server::{Lifecycle, Server};` makes `crate::Server` a
    // use of `server`.
    let mut reexports: BTreeMap<String, String> = BTreeMap::new();
    for (_, statement) in statements(&root.join("lib.rs")) {
        let Some(path) = statement.trim().strip_prefix("pub use ") else {
            continue;
        };
        let module = ident_at(path).expect("a module").to_owned();
        let items = &path[module.len()..];
        let items = items.trim_start_matches("::");
        for name in names_after(&format!("x::{items}"), "x::") {
            reexports.insert(name, module.clone());
        }
    }
    let mut graph = Graph::new();
    for file in &files {
        let from = top_module(file, &root);
        for (number, statement) in statements(file) {
            for name in names_after(&statement, "crate::") {
                let to = if modules.contains(&name) {
                    name.clone()
                } else if let Some(module) = reexports.get(&name) {
                    module.clone()
                } else {
                    panic!(
                        "{}:{number}: crate::{name} is neither a module nor a name lib.rs \
                         re-exports; teach tests/layering.rs",
                        relative(file)
                    );
                };
                add(
                    &mut graph,
                    &from,
                    &to,
                    format!("{}:{number}", relative(file)),
                );
            }
        }
    }
    (modules, graph)
}

/// The layers `lib.rs` states, bottom up: lines `//! N. layer: `a`, `b` (a note)`.
fn stated_layers() -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(src().join("lib.rs")).expect("lib.rs");
    let mut layers = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("//! ") else {
            continue;
        };
        let Some((number, names)) = rest.split_once(". layer: ") else {
            continue;
        };
        assert_eq!(
            number.parse::<usize>().ok(),
            Some(layers.len() + 1),
            "lib.rs: layers are numbered 1, 2, … in order: {line}"
        );
        let names = names.split('(').next().expect("split gives one");
        let layer: Vec<String> = names
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        assert!(!layer.is_empty(), "lib.rs: a layer without modules: {line}");
        layers.push(layer);
    }
    layers
}

#[test]
fn every_use_between_library_modules_points_down_the_layers_lib_rs_states() {
    let (modules, graph) = library_graph();
    let layers = stated_layers();
    assert!(layers.len() >= 5, "lib.rs states no layering");
    // Position of each module in the order: layer, then place within the layer.
    let mut rank: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (l, layer) in layers.iter().enumerate() {
        for (p, name) in layer.iter().enumerate() {
            assert!(
                rank.insert(name, (l + 1, p)).is_none(),
                "lib.rs names {name} in two layers"
            );
            assert!(
                modules.contains(name),
                "lib.rs names {name}, which is no module"
            );
        }
    }
    let unplaced: Vec<&String> = modules
        .iter()
        .filter(|m| !rank.contains_key(m.as_str()))
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules in no layer of lib.rs: {unplaced:?}"
    );
    let mut upward = Vec::new();
    for (from, uses) in &graph {
        for (to, seen) in uses {
            if rank[to.as_str()] >= rank[from.as_str()] {
                upward.push(format!(
                    "{from} (layer {}) uses {to} (layer {}) at {}",
                    rank[from.as_str()].0,
                    rank[to.as_str()].0,
                    seen.join(", ")
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "uses that go up the layering of lib.rs:\n{}",
        upward.join("\n")
    );
    let edges: usize = graph.values().map(BTreeMap::len).sum();
    eprintln!(
        "{} modules in {} layers, {edges} uses between them, all pointing down",
        modules.len(),
        layers.len()
    );
    // The reader sees uses at all (a parser that found none would pass anything).
    assert!(
        graph["server"].contains_key("conn") && graph["conn"].contains_key("protocol"),
        "the reader missed known uses: {graph:?}"
    );
}

/// The binary's files: each file of `src/cli/` (a folder such as `bench/` is one).
fn cli_graph() -> Graph {
    let root = src().join("cli");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let nodes: BTreeSet<String> = files.iter().map(|f| top_module(f, &root)).collect();
    let mut graph = Graph::new();
    for file in &files {
        let from = top_module(file, &root);
        // How many `super::` reach `src/cli/` from here: one from `serve.rs` and from
        // `bench/mod.rs`, two from `bench/idle.rs`.
        let folders = file
            .strip_prefix(&root)
            .expect("under cli")
            .components()
            .count()
            - 1;
        let is_mod = file.file_name().is_some_and(|name| name == "mod.rs");
        let levels = folders + usize::from(!is_mod);
        let to_cli = "super::".repeat(levels);
        let at_top = levels == 0;
        for (number, statement) in statements(file) {
            // The files' own unit tests (`use super::*`) are the file itself.
            if statement.contains("#[cfg(test)]") {
                break;
            }
            let at = format!("{}:{number}", relative(file));
            if at_top {
                if let Some(name) = statement.trim().strip_prefix("mod ") {
                    let name = name.trim_end_matches(';');
                    add(&mut graph, "mod", name, at.clone());
                }
                continue;
            }
            let mut names = names_after(&statement, "crate::cli::");
            names.extend(
                names_after(&statement, &to_cli)
                    .into_iter()
                    .filter(|name| name != "super"),
            );
            for name in names {
                let to = if nodes.contains(&name) {
                    name
                } else {
                    "mod".to_owned()
                };
                add(&mut graph, &from, &to, at.clone());
            }
        }
    }
    graph
}

/// A cycle in `graph`, if there is one: its nodes in order.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flat_map(BTreeMap::keys) {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn no_two_files_of_the_command_line_use_each_other() {
    let graph = cli_graph();
    if let Some(cycle) = find_cycle(&graph) {
        let steps: Vec<String> = cycle
            .windows(2)
            .map(|pair| {
                format!(
                    "{} uses {} at {}",
                    pair[0],
                    pair[1],
                    graph[&pair[0]][&pair[1]].join(", ")
                )
            })
            .collect();
        panic!("a cycle among the files of src/cli/:\n{}", steps.join("\n"));
    }
    assert!(
        graph["mod"].contains_key("serve") && graph["serve"].contains_key("config_flags"),
        "the reader missed known uses: {graph:?}"
    );
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let mut graph = Graph::new();
    add(&mut graph, "a", "b", "x".into());
    add(&mut graph, "b", "c", "x".into());
    assert_eq!(find_cycle(&graph), None);
    add(&mut graph, "c", "a", "x".into());
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(
        names_after("use crate::{a::b, c, d::{e, f}};", "crate::"),
        ["a", "c", "d"]
    );
    assert_eq!(names_after("super::super::x", "super::"), ["super"]);
}

/// The names in backticks of a Markdown table row.
fn quoted(row: &str) -> Vec<&str> {
    row.split('`').skip(1).step_by(2).collect()
}

/// `lib.rs`'s map has a row for every module of the library, and names no other: a module
/// left out is a concern a reader cannot find.
#[test]
fn lib_rs_maps_every_module_of_the_library() {
    let (modules, _) = library_graph();
    let text = std::fs::read_to_string(src().join("lib.rs")).expect("lib.rs");
    let mut mapped = BTreeSet::new();
    for line in text.lines() {
        let Some(row) = line.strip_prefix("//! | ") else {
            continue;
        };
        let first = row.split(" | ").next().expect("a column");
        mapped.extend(quoted(first).into_iter().map(|name| name.to_owned()));
    }
    mapped.remove("module");
    let unmapped: Vec<&String> = modules.difference(&mapped).collect();
    let unknown: Vec<&String> = mapped.difference(&modules).collect();
    assert!(
        unmapped.is_empty() && unknown.is_empty(),
        "lib.rs's map lacks {unmapped:?} and names {unknown:?}, which are no modules"
    );
}

/// Every path that README's "Where things are" names exists (a file that moved leaves its
/// row pointing nowhere).
#[test]
fn every_path_readme_maps_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let section = readme
        .split("\n## Where things are\n")
        .nth(1)
        .expect("README: a section 'Where things are'");
    let section = section.split("\n## ").next().expect("the section");
    let paths: Vec<&str> = section
        .lines()
        .filter(|line| line.starts_with('|'))
        .flat_map(quoted)
        .filter(|quoted| quoted.contains('/') && !quoted.contains(' '))
        .collect();
    assert!(
        paths.len() > 20,
        "the reader found too few paths: {paths:?}"
    );
    let missing: Vec<&&str> = paths.iter().filter(|p| !root.join(p).exists()).collect();
    assert!(
        missing.is_empty(),
        "README's 'Where things are' names paths that do not exist: {missing:?}"
    );
}

/// The lines of a file's code outside its tests (`#[cfg(test)]` and what follows it), without
/// comments, each with its number.
fn code_outside_tests(path: &Path) -> Vec<(usize, String)> {
    code_lines(path)
        .into_iter()
        .take_while(|(_, line)| line.trim() != "#[cfg(test)]")
        .collect()
}

/// Whether `text` holds `word` not as part of a longer word (of the characters `part`).
fn holds_word(text: &str, word: &str, part: impl Fn(char) -> bool) -> bool {
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(&part) && !after.is_some_and(&part)
    })
}

/// Each configuration key is written as text once in `src/`: in its row of the table of keys
/// (`src/config/keys.rs`, as a name the macro turns into text). Nowhere else does code spell it
/// as the file does (`"keepalive_idle"`), as its flag (`--keepalive-idle`) or as its variable
/// (`CONNWARDEN_KEEPALIVE_IDLE`): everything names it by `Key`. Comments and tests may.
#[test]
fn each_configuration_key_is_spelled_once_in_src() {
    // Other vocabularies that share words with the keys: close reasons (`max_age`,
    // `idle_timeout`), Cargo features (`feature = "admin"`).
    let reasons: Vec<&str> = connwarden::CloseReason::ALL
        .iter()
        .map(|r| r.as_str())
        .collect();
    let features = ["admin", "tls", "nats", "cli"];
    // Files whose words are another thing's, not the keys: `send`'s own flags are the
    // client's settings (its `--tls-cert` is the certificate it presents); the socket
    // options' module names the `listen(2)` call and the TCP state LISTEN.
    let elsewhere = [
        ("src/cli/send.rs", None),
        ("src/sockopt.rs", Some("listen")),
    ];
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    let mut spelled = Vec::new();
    for path in &files {
        let file = relative(path);
        for (number, line) in code_outside_tests(path) {
            for name in connwarden::config::KEYS {
                let exempt = elsewhere
                    .iter()
                    .any(|(f, word)| *f == file && word.is_none_or(|w| w == *name));
                if exempt {
                    continue;
                }
                let flag = format!("--{}", name.replace('_', "-"));
                let var = format!("CONNWARDEN_{}", name.to_uppercase());
                // A Cargo feature shares its name with a key (`admin`): `feature = "admin"`.
                let quoted = format!("\"{name}\"");
                let other_word = reasons.contains(name) || features.contains(name);
                let lowercase = |c: char| c.is_ascii_lowercase() || c == '-' || c == '_';
                let uppercase = |c: char| c.is_ascii_uppercase() || c == '_';
                if (line.contains(&quoted) && !other_word)
                    || holds_word(&line, &flag, lowercase)
                    || holds_word(&line, &var, uppercase)
                {
                    spelled.push(format!("{file}:{number}: {name}"));
                }
            }
        }
    }
    assert!(
        spelled.is_empty(),
        "a configuration key spelled as text outside its declaration (name it by config::Key):\n{}",
        spelled.join("\n")
    );
    // The reader finds a spelling where there is one.
    let line = "settings.set_flag(\"queue\", \"8\"); // --queue";
    assert!(line.contains("\"queue\"") && !holds_word(code(line), "--queue", |c| c == '-'));
    assert!(holds_word("run --max-age 1h", "--max-age", |c: char| c
        == '-'
        || c.is_ascii_lowercase()));
    assert!(!holds_word(
        "run --max-age-grace 1h",
        "--max-age",
        |c: char| c == '-' || c.is_ascii_lowercase()
    ));
}
