//! The library's modules form layers: a module uses what sits below it, never what sits above. This test reads every
//! `crate::` path in `src/` (outside comments and test modules) and fails on any circle, between files and between
//! the top-level folders, naming the circle and one line that closes it.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The module path of a source file: `src/conda/view.rs` → `conda::view`, `src/conda/mod.rs` → `conda`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its comments and its `#[cfg(test)]` module, line by line with line numbers.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let code = match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        };
        out.push((i + 1, code.to_owned()));
    }
    out
}

/// The `crate::a::b::…` paths on a line, each as its segments.
fn crate_paths(line: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(rest.len());
        out.push(rest[..end].split("::").filter(|s| !s.is_empty()).map(str::to_owned).collect());
    }
    out
}

/// The longest known module that `path` starts with.
fn resolve(path: &[String], modules: &BTreeSet<String>) -> Option<String> {
    (1..=path.len()).rev().map(|n| path[..n].join("::")).find(|m| modules.contains(m))
}

type Edges = BTreeMap<String, BTreeMap<String, String>>;

/// A circle in `edges`, as the nodes in order, if there is one.
fn find_cycle(edges: &Edges) -> Option<Vec<String>> {
    fn visit(n: &str, edges: &Edges, state: &mut BTreeMap<String, u8>, stack: &mut Vec<String>) -> Option<Vec<String>> {
        state.insert(n.to_owned(), 1);
        stack.push(n.to_owned());
        for m in edges.get(n).into_iter().flat_map(|e| e.keys()) {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|s| s == m).unwrap();
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, edges, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn describe(cycle: &[String], edges: &Edges) -> String {
    cycle.windows(2).map(|w| format!("{} → {}   ({})", w[0], w[1], edges[&w[0]][&w[1]])).collect::<Vec<_>>().join("\n")
}

/// Module-level and folder-level dependency edges of the library, each with one place that makes it.
fn edges() -> (BTreeSet<String>, Edges, Edges) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    // The binary's own modules sit above the library and are not part of it.
    files.retain(|f| f.file_name().is_some_and(|n| n != "main.rs") && !f.starts_with(src.join("cli")));
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let (mut by_module, mut by_folder) = (Edges::new(), Edges::new());
    for file in &files {
        let from = module_of(&src, file);
        let text = std::fs::read_to_string(file).unwrap();
        for (line, code) in code_lines(&text) {
            for path in crate_paths(&code) {
                let Some(to) = resolve(&path, &modules) else { continue };
                let place = format!("{}:{line}", file.strip_prefix(&src).unwrap().display());
                // A module may use the parts below it in its own folder, and its parent's re-exports.
                if to != from && !from.starts_with(&format!("{to}::")) {
                    by_module.entry(from.clone()).or_default().entry(to.clone()).or_insert(place.clone());
                }
                let (top_from, top_to) = (from.split("::").next().unwrap(), to.split("::").next().unwrap());
                if top_from != top_to {
                    by_folder.entry(top_from.into()).or_default().entry(top_to.into()).or_insert(place);
                }
            }
        }
    }
    (modules, by_module, by_folder)
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let (modules, by_module, _) = edges();
    assert!(modules.len() > 20 && by_module.len() > 15, "too few modules were read: {modules:?}");
    if let Some(cycle) = find_cycle(&by_module) {
        panic!("modules import each other in a circle:\n{}", describe(&cycle, &by_module));
    }
}

#[test]
fn no_folder_imports_a_folder_that_imports_it_back() {
    let (_, _, by_folder) = edges();
    if let Some(cycle) = find_cycle(&by_folder) {
        panic!("top-level modules import each other in a circle:\n{}", describe(&cycle, &by_folder));
    }
}

#[test]
fn the_checker_finds_a_circle() {
    let mut edges = Edges::new();
    edges.entry("a".into()).or_default().insert("b".into(), "a.rs:1".into());
    edges.entry("b".into()).or_default().insert("c".into(), "b.rs:2".into());
    assert!(find_cycle(&edges).is_none());
    edges.entry("c".into()).or_default().insert("a".into(), "c.rs:3".into());
    let cycle = find_cycle(&edges).expect("a → b → c → a is a circle");
    assert_eq!(cycle, ["a", "b", "c", "a"]);
    assert_eq!(crate_paths("use crate::conda::route::{self, X};"), [["conda", "route"]]);
    assert_eq!(code_lines("use crate::a; // crate::b\n#[cfg(test)]\nuse crate::c;")[0].1, "use crate::a; ");
    assert!(crate_paths("my_crate::x").is_empty());
}
