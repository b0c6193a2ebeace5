//! The layering rule of src/lib.rs, checked: every `crate::X` path under src/ names a
//! top-level module of the same level or below, and no modules use each other in a circle.
//! The levels are read from the crate docs themselves (`//! - level N: a, b`), so the rule
//! written there and the rule checked here are one text.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Level of each top-level module, from `//! - level N: a, b, c` lines.
fn levels(lib_rs: &str) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for line in lib_rs.lines() {
        let Some(rest) = line.trim().strip_prefix("//! - level ") else {
            continue;
        };
        let (n, modules) = rest.split_once(':').expect("`level N: a, b`");
        let n: u32 = n.trim().parse().expect("a level number");
        for m in modules.split(',') {
            let m = m.trim().trim_end_matches('.');
            assert!(out.insert(m.to_string(), n).is_none(), "{m} listed twice");
        }
    }
    out
}

fn ch(c: &[char], i: usize) -> char {
    c.get(i).copied().unwrap_or('\0')
}

/// The text with comments, string and char literals blanked out (newlines kept, so offsets
/// still give line numbers).
fn code_only(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < c.len() {
        let at = |k: usize| ch(&c, i + k);
        if at(0) == '/' && at(1) == '/' {
            while i < c.len() && c[i] != '\n' {
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if at(0) == '/' && at(1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if ch(&c, i) == '/' && ch(&c, i + 1) == '*' {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if ch(&c, i) == '*' && ch(&c, i + 1) == '/' {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if at(0) == 'r' && (at(1) == '"' || (at(1) == '#' && matches!(at(2), '"' | '#'))) {
            // Raw string: r"..." or r#"..."#.
            let hashes = c[i + 1..].iter().take_while(|&&h| h == '#').count();
            let end: String = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            let start = i + 2 + hashes;
            let body: String = c[start..].iter().collect();
            let len = body
                .find(&end)
                .map(|b| body[..b].chars().count())
                .unwrap_or(body.len());
            for &ch in &c[i..(start + len + end.len()).min(c.len())] {
                blank(&mut out, ch);
            }
            i = start + len + end.len();
        } else if at(0) == '"' {
            blank(&mut out, c[i]);
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    blank(&mut out, c[i]);
                    i += 1;
                }
                if i < c.len() {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
            if i < c.len() {
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if at(0) == '\'' && (at(1) == '\\' || at(2) == '\'') {
            // A char literal ('"', '{', '\n'); a lifetime ('a) has no closing quote.
            let close = (i + 2..c.len()).find(|&k| c[k] == '\'' && c[k - 1] != '\\' || k > i + 12);
            let end = close.map(|k| k + 1).unwrap_or(c.len());
            for &ch in &c[i..end] {
                blank(&mut out, ch);
            }
            i = end;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// Top-level module names that `crate::` paths in `code` name, with 1-based line numbers:
/// `crate::a::b`, `crate::{a, b::{c, d}}` (across lines).
fn crate_refs(code: &str) -> Vec<(usize, String)> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let line_of = |offset: usize| code[..offset].matches('\n').count() + 1;
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(k) = code[from..].find("crate::") {
        let at = from + k;
        from = at + "crate::".len();
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue; // `kompress_crate::`, `$crate::`
        }
        let rest = &code[from..];
        if let Some(group) = rest.trim_start().strip_prefix('{') {
            // The first segment of each item at depth 1 of the group.
            let (mut depth, mut item_start) = (1, true);
            let offset = from + (rest.len() - rest.trim_start().len()) + 1;
            for (j, ch) in group.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => item_start = true,
                    c if item_start && depth == 1 && (c.is_alphanumeric() || c == '_') => {
                        item_start = false;
                        out.push((line_of(offset + j), ident(&group[j..])));
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.push((line_of(at), name));
            }
        }
    }
    out
}

/// The top-level module a file under src/ belongs to (`None` for the crate root files).
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "main.rs" => None,
        f => Some(f.trim_end_matches(".rs").to_string()),
    }
}

/// Every violation: uses of higher levels, of unlisted modules, and cycles. `files` are
/// (path relative to src/, text).
fn check(levels: &BTreeMap<String, u32>, files: &[(PathBuf, String)]) -> Vec<String> {
    let mut problems = Vec::new();
    // module -> used module -> first place it is used
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (rel, text) in files {
        let Some(module) = module_of(rel) else {
            continue;
        };
        let Some(&level) = levels.get(&module) else {
            problems.push(format!(
                "src/{}: module `{module}` has no level in src/lib.rs's layering list",
                rel.display()
            ));
            continue;
        };
        for (line, used) in crate_refs(&code_only(text)) {
            if used == module {
                continue;
            }
            let place = format!("src/{}:{line}", rel.display());
            match levels.get(&used) {
                None => problems.push(format!(
                    "{place}: `crate::{used}` is not a module listed in src/lib.rs's layering list"
                )),
                Some(&l) if l > level => problems.push(format!(
                    "{place}: `{module}` (level {level}) uses `{used}` (level {l}); layers only point down"
                )),
                Some(_) => {}
            }
            edges
                .entry(module.clone())
                .or_default()
                .entry(used)
                .or_insert(place);
        }
    }
    // Cycles: a depth-first search from every module; each cycle reported once.
    let mut reported = BTreeSet::new();
    for start in edges.keys() {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        while let Some((at, path)) = stack.pop() {
            for next in edges.get(&at).map(|m| m.keys()).into_iter().flatten() {
                if next == start {
                    let mut cycle = path.clone();
                    let mut key = cycle.clone();
                    key.sort();
                    if reported.insert(key) {
                        cycle.push(start.clone());
                        let places: Vec<String> = cycle
                            .windows(2)
                            .map(|w| format!("{} -> {} at {}", w[0], w[1], edges[&w[0]][&w[1]]))
                            .collect();
                        problems.push(format!(
                            "cycle {}: {}",
                            cycle.join(" -> "),
                            places.join("; ")
                        ));
                    }
                } else if !path.contains(next) {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
    problems
}

fn rust_files(dir: &Path, root: &Path, out: &mut Vec<(PathBuf, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            out.push((path.strip_prefix(root).unwrap().to_path_buf(), text));
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn no_module_uses_a_module_above_it_and_there_are_no_cycles() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let levels = levels(&lib);
    let mut files = Vec::new();
    rust_files(&src(), &src(), &mut files);
    assert!(files.len() > 20, "found the sources");
    let problems = check(&levels, &files);
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

#[test]
fn every_module_of_the_crate_root_has_a_level_and_every_level_names_a_module() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let listed: BTreeSet<String> = levels(&lib).into_keys().collect();
    let declared: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .chain(lib.lines().filter_map(|l| l.trim().strip_prefix("mod ")))
        .map(|m| m.trim_end_matches(';').to_string())
        .collect();
    assert_eq!(
        listed, declared,
        "src/lib.rs: the layering list and `mod` lines differ"
    );
}

fn planted(files: &[(&str, &str)]) -> Vec<String> {
    let levels = levels("//! - level 0: api, uri\n//! - level 1: storage\n//! - level 4: cli\n");
    let files: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(p, t)| (PathBuf::from(p), t.to_string()))
        .collect();
    check(&levels, &files)
}

#[test]
fn the_checker_names_the_file_and_line_of_an_upward_use() {
    let p = planted(&[
        ("storage/mod.rs", "use crate::api::StorageSpec;\n"),
        (
            "api/status.rs",
            "//! status\n\nuse crate::cli::WorkerMessage;\n",
        ),
    ]);
    assert_eq!(
        p,
        ["src/api/status.rs:3: `api` (level 0) uses `cli` (level 4); layers only point down"]
    );
    // A grouped use across lines counts each of its modules, at its own line.
    let p = planted(&[(
        "uri.rs",
        "use crate::{\n    api::X,\n    storage::{Location, Scheme},\n};\n",
    )]);
    assert_eq!(
        p,
        ["src/uri.rs:3: `uri` (level 0) uses `storage` (level 1); layers only point down"]
    );
    // An expression path counts like a `use`.
    let p = planted(&[(
        "api/mod.rs",
        "fn f() { crate::storage::Storage::new(None); }\n",
    )]);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("src/api/mod.rs:1:"), "{p:?}");
}

#[test]
fn the_checker_finds_a_cycle_within_one_level() {
    let p = planted(&[
        ("api/validate.rs", "use crate::uri::Location;\n"),
        ("uri.rs", "\n\nfn f(_: crate::api::StorageSpec) {}\n"),
    ]);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("cycle api -> uri -> api:")
            && p[0].contains("src/api/validate.rs:1")
            && p[0].contains("src/uri.rs:3"),
        "{p:?}"
    );
}

#[test]
fn the_checker_refuses_modules_without_a_level() {
    let mut p = planted(&[
        ("report.rs", "use crate::api::JobResult;\n"),
        ("cli/mod.rs", "use crate::report::Report;\n"),
    ]);
    p.sort();
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(
        p[0].contains("src/cli/mod.rs:1: `crate::report` is not a module listed"),
        "{p:?}"
    );
    assert!(
        p[1].contains("src/report.rs: module `report` has no level"),
        "{p:?}"
    );
}

#[test]
fn comments_strings_and_macro_paths_do_not_count() {
    let p = planted(&[(
        "api/mod.rs",
        concat!(
            "//! Used by [`crate::cli`].\n",
            "/* crate::cli /* nested */ crate::storage */\n",
            "const A: &str = \"crate::cli\";\n",
            "const B: &str = r#\"crate::storage \"quoted\" \"#;\n",
            "const C: char = '\"'; const D: &str = \"crate::cli\";\n",
            "fn e<'a>(x: &'a str) -> &'a str { x }\n",
            "macro_rules! m { () => { $crate::cli::run() } }\n",
            "use crate::uri::Location; // crate::cli\n",
        ),
    )]);
    assert!(p.is_empty(), "{p:?}");
}

/// The module path of a file under src/ (`passes/quant/mod.rs` -> passes::quant).
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| {
            c.as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string()
        })
        .collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    parts
}

/// The paths `super::`, `self::` and `crate::` name in `code`, resolved from module `at`
/// (a grouped use gives one path per leaf).
fn relative_paths(code: &str, at: &[String]) -> Vec<Vec<String>> {
    fn ident(s: &str) -> &str {
        let end = s
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(s.len());
        &s[..end]
    }
    /// The leaves of the path tail `rest` (after `base::`), each appended to `base`.
    fn leaves(rest: &str, base: Vec<String>, out: &mut Vec<Vec<String>>) {
        let rest = rest.trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            let (mut depth, mut start) = (0, 0);
            for (j, ch) in group.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        leaves(&group[start..j], base.clone(), out);
                        return;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        leaves(&group[start..j], base.clone(), out);
                        start = j + 1;
                    }
                    _ => {}
                }
            }
            return;
        }
        let name = ident(rest);
        if name.is_empty() {
            out.push(base);
            return;
        }
        let mut path = base;
        match name {
            "super" => {
                path.pop();
            }
            "self" => {}
            n => path.push(n.to_string()),
        }
        match rest[name.len()..].trim_start().strip_prefix("::") {
            Some(tail) => leaves(tail, path, out),
            None => out.push(path),
        }
    }
    let mut out = Vec::new();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(k) = code[from..].find(start) {
            let i = from + k;
            from = i + start.len();
            let before = code[..i].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$' || c == ':') {
                continue; // a later segment of a path already read, `$crate::`
            }
            let base = match start {
                "crate::" => vec![],
                "super::" => at[..at.len().saturating_sub(1)].to_vec(),
                _ => at.to_vec(),
            };
            leaves(&code[from..], base, &mut out);
        }
    }
    out
}

/// Cycles between sibling modules under `root` (e.g. `passes`): a module's use of another
/// module counts as an edge between the two siblings that contain them (a parent using its
/// children, or a child its parent's items, is no edge). Inline test modules are left out.
fn sibling_cycles(files: &[(PathBuf, String)], root: &str) -> Vec<String> {
    let modules: BTreeSet<Vec<String>> = files.iter().map(|(p, _)| module_path(p)).collect();
    let mut edges: BTreeMap<Vec<String>, BTreeMap<Vec<String>, String>> = BTreeMap::new();
    for (rel, text) in files {
        let from = module_path(rel);
        if from.first().map(String::as_str) != Some(root) {
            continue;
        }
        let code = code_only(text);
        let code = match code.find("#[cfg(test)]\nmod tests") {
            Some(i) => &code[..i],
            None => &code[..],
        };
        for path in relative_paths(code, &from) {
            // The module the path names: its longest prefix that is a module.
            let Some(to) = (1..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| modules.contains(p))
            else {
                continue;
            };
            let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if common == from.len() || common == to.len() {
                continue; // one contains the other
            }
            edges
                .entry(from[..=common].to_vec())
                .or_default()
                .entry(to[..=common].to_vec())
                .or_insert_with(|| format!("src/{}", rel.display()));
        }
    }
    let mut problems = BTreeSet::new();
    for start in edges.keys() {
        let mut stack = vec![vec![start.clone()]];
        while let Some(path) = stack.pop() {
            let at = path.last().expect("a path");
            for next in edges.get(at).map(|m| m.keys()).into_iter().flatten() {
                if next == start {
                    let mut key: Vec<String> = path.iter().map(|m| m.join("::")).collect();
                    key.sort();
                    let cycle: Vec<String> =
                        path.iter().chain([start]).map(|m| m.join("::")).collect();
                    let places: Vec<&String> = path
                        .iter()
                        .zip(path.iter().skip(1).chain([start]))
                        .map(|(a, b)| &edges[a][b])
                        .collect();
                    problems.insert((key, format!("cycle {} (at {places:?})", cycle.join(" -> "))));
                } else if !path.contains(next) {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push(p);
                }
            }
        }
    }
    let mut seen = BTreeSet::new();
    problems
        .into_iter()
        .filter(|(k, _)| seen.insert(k.clone()))
        .map(|(_, p)| p)
        .collect()
}

#[test]
fn the_passes_modules_use_each_other_without_a_cycle() {
    let mut files = Vec::new();
    rust_files(&src(), &src(), &mut files);
    let problems = sibling_cycles(&files, "passes");
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

#[test]
fn the_sibling_checker_finds_a_cycle_through_super_and_crate_paths() {
    let files: Vec<(PathBuf, String)> = [
        ("passes/mod.rs", "mod a;\nmod b;\nmod c;\npub use a::X;\n"),
        ("passes/a.rs", "use super::{Error, b::Y};\n"),
        ("passes/b.rs", "use crate::passes::c::Z;\n"),
        ("passes/c/mod.rs", "mod d;\nuse super::Error;\n"),
        (
            "passes/c/d.rs",
            "fn f() { super::super::a::g(); }\n#[cfg(test)]\nmod tests { use super::super::b; }\n",
        ),
    ]
    .iter()
    .map(|(p, t)| (PathBuf::from(p), t.to_string()))
    .collect();
    let p = sibling_cycles(&files, "passes");
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].contains("passes::a -> passes::b -> passes::c -> passes::a")
            || p[0].contains("passes::b -> passes::c -> passes::a -> passes::b")
            || p[0].contains("passes::c -> passes::a -> passes::b -> passes::c"),
        "{p:?}"
    );
    // Without the edge back from c::d to a, no cycle.
    let acyclic: Vec<(PathBuf, String)> = files
        .into_iter()
        .filter(|(p, _)| !p.ends_with("d.rs"))
        .collect();
    assert!(sibling_cycles(&acyclic, "passes").is_empty());
}
