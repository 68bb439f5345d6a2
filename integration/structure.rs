//! The shape of `src/` (issue 26): no cycle among its modules and no hand-written file over
//! [`MAX_LINES`] lines.
//!
//! Edges are read from the code as text, the way a reader follows them: every `use` tree and
//! every `crate::…`, `super::…` and `self::…` path, plus paths through a module a `use` line
//! brought into scope (`use crate::source;` then `source::libvirt::X`). Each path resolves to
//! the longest known module it names. A parent naming its own child (or any descendant) is no
//! edge: the parent declares it. Comments, string literals and `#[cfg(test)]` modules are left
//! out, as are `src/main.rs` (the binary, which sees the library from outside) and files that
//! are test modules or generated.
//!
//! On failure it prints each cycle's modules with the edges that close it, or each long file.
//! `cargo test --test structure -- --nocapture` prints the module order, leaf first.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is the report

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The longest a hand-written file in `src/` may be, its `#[cfg(test)]` modules aside.
const MAX_LINES: usize = 600;

/// One file of the crate: its module path (`source::libvirt`; `crate` for lib.rs) and its code
/// with comments, literals and test modules blanked.
struct File {
    module: String,
    path: PathBuf,
    code: String,
    lines: usize,
}

fn main_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn module_of(rel: &Path) -> String {
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_owned());
    }
    if parts.is_empty() { "crate".to_owned() } else { parts.join("::") }
}

/// `code` with comments and the insides of string and char literals replaced by spaces
/// (newlines kept, so lines and braces still count).
fn blank(code: &str) -> String {
    let c: Vec<char> = code.chars().collect();
    let mut out = String::with_capacity(code.len());
    let mut i = 0;
    let keep = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    while i < c.len() {
        let ident_before = i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_');
        if c[i] == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    keep(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if !ident_before && (c[i] == 'r' || (c[i] == 'b' && c.get(i + 1) == Some(&'r'))) && {
            let mut j = i + if c[i] == 'b' { 2 } else { 1 };
            while c.get(j) == Some(&'#') {
                j += 1;
            }
            c.get(j) == Some(&'"')
        } {
            // Raw string: r#"…"#.
            let mut j = i + if c[i] == 'b' { 2 } else { 1 };
            let mut hashes = 0;
            while c[j] == '#' {
                hashes += 1;
                j += 1;
            }
            out.push('"');
            j += 1;
            while j < c.len() {
                if c[j] == '"' && (1..=hashes).all(|k| c.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                keep(&mut out, c[j]);
                j += 1;
            }
            out.push('"');
            i = j;
        } else if c[i] == '"' {
            out.push('"');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    keep(&mut out, c[i]);
                    i += 1;
                }
                if i < c.len() {
                    keep(&mut out, c[i]);
                    i += 1;
                }
            }
            out.push('"');
            i += 1;
        } else if c[i] == '\'' && (c.get(i + 1) == Some(&'\\') || c.get(i + 2) == Some(&'\'')) {
            // A char literal ('x', '\n', '\u{1F600}'); a lifetime ('a) has no closing quote.
            out.push('\'');
            i += 1;
            while i < c.len() && c[i] != '\'' {
                if c[i] == '\\' {
                    i += 1;
                }
                i += 1;
                out.push(' ');
            }
            out.push('\'');
            i += 1;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// Blanks every `#[cfg(test)] mod name { … }` and returns the names of `#[cfg(test)] mod
/// name;` declarations (test modules in files of their own) and the lines blanked.
fn drop_test_modules(code: &mut String) -> (Vec<String>, usize) {
    let mut declared = Vec::new();
    let mut dropped = 0;
    let mut from = 0;
    while let Some(at) = code[from..].find("#[cfg(test)]").map(|p| p + from) {
        let rest = &code[at + "#[cfg(test)]".len()..];
        let item = rest.trim_start();
        let item_at = code.len() - item.len();
        // `mod x`, `pub mod x`, `pub(crate) mod x`, `pub(in a::b) mod x`.
        let unscoped = match item.strip_prefix("pub(") {
            Some(rest) => rest.find(')').map_or(item, |close| rest[close + 1..].trim_start()),
            None => item.strip_prefix("pub ").unwrap_or(item),
        };
        let Some(after_mod) = unscoped.strip_prefix("mod ") else {
            from = at + 1;
            continue;
        };
        let name: String = after_mod.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let tail = after_mod[name.len()..].trim_start();
        if tail.starts_with(';') {
            declared.push(name);
            from = item_at;
            continue;
        }
        let open = item_at + item.find('{').unwrap();
        let mut depth = 0;
        let mut end = open;
        for (k, ch) in code[open..].char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        dropped += code[at..end].lines().count();
        let blanked: String = code[at..end].chars().map(|ch| if ch == '\n' { '\n' } else { ' ' }).collect();
        code.replace_range(at..end, &blanked);
        from = end;
    }
    (declared, dropped)
}

fn is_generated(text: &str) -> bool {
    text.lines().take(5).any(|l| l.contains("@generated") || l.contains("Generated by") || l.contains("DO NOT EDIT"))
}

fn read_crate() -> Vec<File> {
    let root = main_dir();
    let mut paths = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let p = entry.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                paths.push(p);
            }
        }
    }
    paths.sort();
    let mut files = Vec::new();
    let mut test_modules = BTreeSet::new();
    for p in paths {
        let rel = p.strip_prefix(&root).unwrap().to_path_buf();
        if rel == Path::new("main.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&p).expect("read file");
        if is_generated(&text) {
            continue;
        }
        let module = module_of(&rel);
        let mut code = blank(&text);
        let (tests, dropped) = drop_test_modules(&mut code);
        for t in tests {
            test_modules.insert(if module == "crate" { t } else { format!("{module}::{t}") });
        }
        let lines = text.lines().count() - dropped;
        files.push(File { module, path: rel, code, lines });
    }
    files.retain(|f| !test_modules.iter().any(|t| f.module == *t || f.module.starts_with(&format!("{t}::"))));
    files
}

/// Flattens one `use` tree (the text between `use` and `;`) into whole paths.
fn flatten_use(tree: &str) -> Vec<Vec<String>> {
    fn go(prefix: &[String], s: &str, out: &mut Vec<Vec<String>>) {
        let s = s.trim();
        if let Some(open) = s.find('{') {
            let head: Vec<String> =
                s[..open].split("::").map(str::trim).filter(|p| !p.is_empty()).map(String::from).collect();
            let inner = &s[open + 1..s.rfind('}').unwrap_or(s.len())];
            let mut p = prefix.to_vec();
            p.extend(head);
            let (mut depth, mut start) = (0, 0);
            for (k, ch) in inner.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        go(&p, &inner[start..k], out);
                        start = k + 1;
                    }
                    _ => {}
                }
            }
            go(&p, &inner[start..], out);
        } else if !s.is_empty() {
            let s = s.split(" as ").next().unwrap_or(s);
            let mut p = prefix.to_vec();
            p.extend(s.split("::").map(str::trim).filter(|x| !x.is_empty()).map(String::from));
            out.push(p);
        }
    }
    let mut out = Vec::new();
    go(&[], tree, &mut out);
    out
}

fn parent(module: &str) -> String {
    match module.rfind("::") {
        Some(i) => module[..i].to_owned(),
        None => "crate".to_owned(),
    }
}

/// The module a path names (longest known prefix), with `crate`/`super`/`self` resolved; `None`
/// for a path that starts elsewhere (another crate).
fn resolve(from: &str, path: &[String], modules: &BTreeSet<String>) -> Option<String> {
    let (mut base, mut rest) = match path.first().map(String::as_str) {
        Some("crate") => ("crate".to_owned(), &path[1..]),
        Some("self") => (from.to_owned(), &path[1..]),
        Some("super") => {
            let mut m = from.to_owned();
            let mut rest = path;
            while rest.first().map(String::as_str) == Some("super") {
                m = parent(&m);
                rest = &rest[1..];
            }
            (m, rest)
        }
        _ => return None,
    };
    while let Some(seg) = rest.first() {
        let next = if base == "crate" { seg.clone() } else { format!("{base}::{seg}") };
        if !modules.contains(&next) {
            break;
        }
        base = next;
        rest = &rest[1..];
    }
    Some(base)
}

fn is_ident(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_'
}

/// Every path of the form `head::a::b` (head one of `heads`) in `code`, outside `use` lines.
fn paths_from(code: &str, heads: &BTreeSet<String>) -> Vec<Vec<String>> {
    let bytes: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if is_ident(bytes[i]) && (i == 0 || !(is_ident(bytes[i - 1]) || bytes[i - 1] == ':')) {
            let start = i;
            while i < bytes.len() && (is_ident(bytes[i]) || (bytes[i] == ':' && bytes.get(i + 1) == Some(&':'))) {
                i += if bytes[i] == ':' { 2 } else { 1 };
            }
            let word: String = bytes[start..i].iter().collect();
            let segs: Vec<String> = word.split("::").filter(|s| !s.is_empty()).map(String::from).collect();
            if segs.len() > 1 && heads.contains(&segs[0]) {
                out.push(segs);
            }
        } else {
            i += 1;
        }
    }
    out
}

/// from → to → one example path.
type Graph = BTreeMap<String, BTreeMap<String, String>>;

fn graph(files: &[File]) -> Graph {
    // `pub(in crate::a::b)` names where an item is visible, not what the module uses.
    let scoped = |code: &str| {
        let mut out = String::with_capacity(code.len());
        let mut rest = code;
        while let Some(at) = rest.find("pub(in ") {
            out.push_str(&rest[..at]);
            let close = rest[at..].find(')').map_or(rest.len(), |c| at + c + 1);
            out.push_str("pub(crate)");
            rest = &rest[close..];
        }
        out.push_str(rest);
        out
    };
    let modules: BTreeSet<String> = files.iter().map(|f| f.module.clone()).collect();
    let mut g: Graph = modules.iter().map(|m| (m.clone(), BTreeMap::new())).collect();
    for f in files {
        let mut found: Vec<Vec<String>> = Vec::new();
        let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut code_wo_use = String::with_capacity(f.code.len());
        let code = scoped(&f.code);
        let mut rest = code.as_str();
        // `use` items (also `pub use`, `pub(crate) use`): flattened; the rest scanned for paths.
        while let Some(at) = find_use(rest) {
            code_wo_use.push_str(&rest[..at]);
            let end = at + rest[at..].find(';').unwrap_or(rest.len() - at);
            let tree = rest[at..end].trim_start_matches("use").trim();
            for p in flatten_use(tree) {
                // `use crate::b::{self}` names `crate::b`.
                let p: Vec<String> = p.into_iter().filter(|s| s != "self").collect();
                if let Some(last) = p.last() {
                    aliases.insert(last.clone(), p.clone());
                }
                found.push(p);
            }
            rest = &rest[(end + 1).min(rest.len())..];
        }
        code_wo_use.push_str(rest);
        let mut heads: BTreeSet<String> = ["crate", "super", "self"].iter().map(|s| s.to_string()).collect();
        heads.extend(aliases.keys().cloned());
        for p in paths_from(&code_wo_use, &heads) {
            match aliases.get(&p[0]) {
                Some(full) if !["crate", "super", "self"].contains(&p[0].as_str()) => {
                    let mut whole = full.clone();
                    whole.extend(p[1..].iter().cloned());
                    found.push(whole);
                }
                _ => found.push(p),
            }
        }
        for p in found {
            let Some(to) = resolve(&f.module, &p, &modules) else { continue };
            let descendant = f.module == "crate" || to.starts_with(&format!("{}::", f.module));
            if to != f.module && !descendant && modules.contains(&to) {
                g.get_mut(&f.module).unwrap().entry(to).or_insert_with(|| p.join("::"));
            }
        }
    }
    g
}

/// The byte offset of the next `use` item keyword in `code` (at a word boundary).
fn find_use(code: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = code[from..].find("use ").map(|p| p + from) {
        let before = code[..at].chars().next_back();
        if before.is_none_or(|c| !is_ident(c) && c != ':') {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// Strongly connected components of more than one module (Tarjan).
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g[v].keys() {
            if !t.index.contains_key(w.as_str()) {
                visit(t, w);
                let lw = t.low[w.as_str()];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w.as_str()) {
                let iw = t.index[w.as_str()];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(w);
                comp.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t =
        T { g, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), on: BTreeSet::new(), out: Vec::new() };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

/// Modules in dependency order, leaf first (only meaningful without cycles).
fn order(g: &Graph) -> Vec<Vec<String>> {
    let mut placed: BTreeSet<String> = BTreeSet::new();
    let mut layers = Vec::new();
    while placed.len() < g.len() {
        let layer: Vec<String> = g
            .iter()
            .filter(|(m, deps)| !placed.contains(*m) && deps.keys().all(|d| placed.contains(d)))
            .map(|(m, _)| m.clone())
            .collect();
        if layer.is_empty() {
            break;
        }
        placed.extend(layer.iter().cloned());
        layers.push(layer);
    }
    layers
}

#[test]
fn src_has_no_module_cycle() {
    let files = read_crate();
    let g = graph(&files);
    let found = cycles(&g);
    let mut report = String::new();
    for comp in &found {
        report.push_str(&format!("\ncycle of {} modules: {}\n", comp.len(), comp.join(", ")));
        for m in comp {
            for (to, via) in &g[m] {
                if comp.contains(to) {
                    report.push_str(&format!("  {m} -> {to}   (via {via})\n"));
                }
            }
        }
    }
    if std::env::var_os("VMB_STRUCTURE_EDGES").is_some() {
        for (m, deps) in &g {
            for (to, via) in deps {
                eprintln!("edge {m} -> {to}   (via {via})");
            }
        }
    }
    if found.is_empty() {
        eprintln!("module order, leaf first ({} modules, 0 cycles):", g.len());
        for (i, layer) in order(&g).iter().enumerate() {
            eprintln!("  {i:2}: {}", layer.join(", "));
        }
    }
    assert!(found.is_empty(), "src/ has {} module cycle(s):{report}", found.len());
}

#[test]
fn no_hand_written_file_over_the_limit() {
    let long: Vec<String> = read_crate()
        .iter()
        .filter(|f| f.lines > MAX_LINES)
        .map(|f| format!("  src/{}: {} lines outside tests (limit {MAX_LINES})", f.path.display(), f.lines))
        .collect();
    assert!(long.is_empty(), "hand-written files over the limit:\n{}", long.join("\n"));
}

/// The reader itself: a cycle through a `use` group, a `super` path and a module alias is
/// seen, a parent naming its child is not an edge, and test modules and literals are skipped.
#[test]
fn the_reader_sees_what_it_should() {
    let file = |module: &str, code: &str| {
        let mut c = blank(code);
        drop_test_modules(&mut c);
        File { module: module.into(), path: PathBuf::from(module), lines: 0, code: c }
    };
    let files = vec![
        file("crate", "pub mod a; pub mod b;"),
        file("a", "use crate::{b::{self, X}, c};\nfn f() { let s = \"crate::d::Y\"; self::inner::T; }"),
        file("a::inner", "fn g() { super::super::d::Z; }"),
        file("b", "use crate::a; // crate::d\nfn h() { a::inner::W; }"),
        file(
            "c",
            "#[cfg(test)]\npub(crate) mod tests { use crate::a::X; }\nfn k() { crate::a::inner::V; }\npub(in crate::b) struct P;",
        ),
        file("d", "use crate::a::inner; fn m<'a>(x: &'a str) -> char { 'b' }"),
    ];
    let g = graph(&files);
    assert_eq!(g["a"].keys().collect::<Vec<_>>(), ["b", "c"], "{g:?}");
    assert_eq!(g["a::inner"].keys().collect::<Vec<_>>(), ["d"], "{g:?}");
    assert_eq!(g["b"].keys().collect::<Vec<_>>(), ["a", "a::inner"], "{g:?}");
    assert_eq!(g["c"].keys().collect::<Vec<_>>(), ["a::inner"], "{g:?}");
    assert!(g["crate"].is_empty(), "{g:?}");
    let found = cycles(&g);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found.contains(&vec!["a".to_owned(), "b".into()]), "{found:?}");
    assert!(found.contains(&vec!["a::inner".to_owned(), "d".into()]), "{found:?}");
}
