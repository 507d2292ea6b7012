//! A `repodata.json` document read once, so that each view costs what it holds.
//!
//! [`Spans::index`] walks a held document once (when it is fetched, off the serving threads) and records where
//! everything is: the members copied through as they are, and, in every package map, the byte ranges of the records
//! of each package name, consecutive records of one name merged into one run (repodata lists a package's records
//! next to each other, so a channel has about as many runs as names). [`Spans::render`] then asks the permission set
//! once per distinct name and copies the runs it may show: a view of 10 % of a channel reads about 10 % of its bytes,
//! however big the document.
//!
//! The output is the same JSON as [`super::filter::filter_repodata`] makes (that single-pass filter is kept as the
//! reference the tests and the fuzz target compare against), except that records keep the whitespace they had.

use std::collections::HashMap;
use std::io::Write;
use std::ops::Range;

use super::filter::{is_absolute_url, FilterError, Scanner};
use crate::conda::route::package_name_of_key;

/// A name id for records whose key names no package: never shown.
const NO_NAME: u32 = u32::MAX;

/// Consecutive records of one package name in a package map.
#[derive(Debug, Clone)]
struct Run {
    name: u32,
    bytes: Range<usize>,
}

/// One top-level member (or one member of `v3`).
#[derive(Debug, Clone)]
enum Part {
    /// Copied as it is: `key` and `value` are the raw ranges.
    Member { key: Range<usize>, value: Range<usize> },
    /// A package map: its key and its runs.
    Map { key: Range<usize>, runs: Vec<Run> },
    /// `v3`: a map of package maps (or of other members, copied).
    V3 { key: Range<usize>, parts: Vec<Part> },
    /// `info`, with an absolute `base_url` already dropped.
    Info { key: Range<usize>, value: Vec<u8> },
    /// `removed`: its file names, each encoded, with the name it belongs to.
    Removed { key: Range<usize>, entries: Vec<(u32, Vec<u8>)> },
}

/// Where the parts of one `repodata.json` document are; see the module documentation.
#[derive(Debug, Clone, Default)]
pub struct Spans {
    parts: Vec<Part>,
    names: Vec<Box<str>>,
    absolute_base_url: bool,
    records: usize,
    runs: usize,
}

/// Interns package names while a document is indexed.
#[derive(Default)]
struct Names {
    ids: HashMap<Box<str>, u32>,
    list: Vec<Box<str>>,
}

impl Names {
    fn id_of_key(&mut self, key: &str) -> u32 {
        let Some(name) = package_name_of_key(key) else {
            return NO_NAME;
        };
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = u32::try_from(self.list.len()).unwrap_or(NO_NAME);
        if id != NO_NAME {
            self.ids.insert(name.into(), id);
            self.list.push(name.into());
        }
        id
    }
}

fn offset(s: &Scanner<'_>, raw: &[u8]) -> Range<usize> {
    let start = raw.as_ptr() as usize - s.b.as_ptr() as usize;
    start..start + raw.len()
}

/// Indexes a package map with the scanner at its value; a value that is not an object is kept as a member.
fn index_map(
    s: &mut Scanner<'_>,
    key: Range<usize>,
    names: &mut Names,
    records: &mut usize,
) -> Result<Part, FilterError> {
    if s.peek() != Some(b'{') {
        let (a, b) = s.value()?;
        return Ok(Part::Member { key, value: a..b });
    }
    let mut runs: Vec<Run> = Vec::new();
    s.object(|s, raw, k| {
        let start = offset(s, raw).start;
        let (_, end) = s.value()?;
        *records += 1;
        let name = names.id_of_key(k);
        match runs.last_mut() {
            Some(last) if last.name == name && name != NO_NAME => last.bytes.end = end,
            _ => runs.push(Run { name, bytes: start..end }),
        }
        Ok(())
    })?;
    runs.retain(|r| r.name != NO_NAME);
    Ok(Part::Map { key, runs })
}

impl Spans {
    /// Reads `doc` once and records where its parts are. Fails as the filter would on a malformed document.
    pub fn index(doc: &[u8]) -> Result<Self, FilterError> {
        let mut s = Scanner { b: doc, i: 0 };
        let mut names = Names::default();
        let mut records = 0;
        let mut parts = Vec::new();
        let mut absolute_base_url = false;
        s.object(|s, raw, k| {
            let key = offset(s, raw);
            let at = s.i;
            let part = match k {
                "packages" | "packages.conda" => index_map(s, key, &mut names, &mut records)?,
                "v3" if s.peek() == Some(b'{') => {
                    let mut inner = Vec::new();
                    s.object(|s, raw, _| {
                        let key = offset(s, raw);
                        inner.push(index_map(s, key, &mut names, &mut records)?);
                        Ok(())
                    })?;
                    Part::V3 { key, parts: inner }
                }
                "info" => {
                    let (a, b) = s.value()?;
                    let mut info: serde_json::Map<String, serde_json::Value> =
                        serde_json::from_slice(&s.b[a..b]).map_err(|_| FilterError { at, what: "an info object" })?;
                    if info.get("base_url").and_then(|v| v.as_str()).is_some_and(is_absolute_url) {
                        absolute_base_url = true;
                        info.remove("base_url");
                        let value = serde_json::to_vec(&info)
                            .map_err(|_| FilterError { at, what: "a writable info object" })?;
                        Part::Info { key, value }
                    } else {
                        Part::Member { key, value: a..b }
                    }
                }
                "removed" => {
                    let (a, b) = s.value()?;
                    let list: Vec<serde_json::Value> =
                        serde_json::from_slice(&s.b[a..b]).map_err(|_| FilterError { at, what: "a removed list" })?;
                    let mut entries = Vec::new();
                    for v in &list {
                        if let Some(file) = v.as_str() {
                            let id = names.id_of_key(file);
                            if id != NO_NAME {
                                let encoded = serde_json::to_vec(file)
                                    .map_err(|_| FilterError { at, what: "a writable removed list" })?;
                                entries.push((id, encoded));
                            }
                        }
                    }
                    Part::Removed { key, entries }
                }
                _ => {
                    let (a, b) = s.value()?;
                    Part::Member { key, value: a..b }
                }
            };
            parts.push(part);
            Ok(())
        })?;
        if s.peek().is_some() {
            return Err(s.err("the end of the document"));
        }
        let runs = parts
            .iter()
            .map(|p| match p {
                Part::Map { runs, .. } => runs.len(),
                Part::V3 { parts, .. } => {
                    parts.iter().map(|p| if let Part::Map { runs, .. } = p { runs.len() } else { 0 }).sum()
                }
                _ => 0,
            })
            .sum();
        Ok(Spans { parts, names: names.list, absolute_base_url, records, runs })
    }

    /// Whether the document has an absolute `info.base_url` (dropped from every view, the full one included).
    pub fn has_absolute_base_url(&self) -> bool {
        self.absolute_base_url
    }

    /// Distinct package names, records and runs: what a render walks.
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.names.len(), self.records, self.runs)
    }

    /// Memory the index holds beyond the document, roughly.
    pub fn heap_bytes(&self) -> usize {
        let names: usize = self.names.iter().map(|n| n.len() + 16).sum();
        names + self.runs * std::mem::size_of::<Run>() + self.parts.len() * std::mem::size_of::<Part>()
    }

    /// Which names `allow` accepts, by id: asked once per distinct name.
    fn shown(&self, allow: &dyn Fn(&str) -> bool) -> Vec<bool> {
        self.names.iter().map(|n| allow(n)).collect()
    }

    /// The exact length of the view [`Spans::render`] makes for `allow`.
    pub fn view_len(&self, allow: &dyn Fn(&str) -> bool) -> usize {
        let shown = self.shown(allow);
        self.len_with(&|id| keep(&shown, id))
    }

    fn len_with(&self, keep: &dyn Fn(u32) -> bool) -> usize {
        joined(self.parts.iter().map(|p| part_len(p, keep)))
    }

    /// Appends to `out` the view of `doc` (the document [`Spans::index`] read) that holds only the records of names
    /// `allow` accepts. `allow` is asked once per distinct name.
    pub fn render(&self, doc: &[u8], allow: &dyn Fn(&str) -> bool, out: &mut Vec<u8>) {
        let shown = self.shown(allow);
        let keep = |id: u32| keep(&shown, id);
        out.reserve(self.len_with(&keep));
        // Writing to a Vec cannot fail.
        let _ = self.write_with(doc, &keep, out);
    }

    /// The `.zst` of the view [`Spans::render`] would make, compressed as it is assembled (the JSON is never held
    /// whole): one zstd frame at `level` on `workers` of zstd's threads (0: this thread), its size in the header.
    pub fn render_zst(
        &self,
        doc: &[u8],
        allow: &dyn Fn(&str) -> bool,
        level: i32,
        workers: u32,
    ) -> std::io::Result<Vec<u8>> {
        let shown = self.shown(allow);
        let keep = |id: u32| keep(&shown, id);
        let len = self.len_with(&keep);
        let mut z = zstd::stream::write::Encoder::new(Vec::with_capacity(len / 8), level)?;
        z.include_contentsize(true)?;
        z.set_pledged_src_size(Some(len as u64))?;
        if workers > 0 {
            z.multithread(workers)?;
        }
        self.write_with(doc, &keep, &mut z)?;
        z.finish()
    }

    fn write_with(&self, doc: &[u8], keep: &dyn Fn(u32) -> bool, out: &mut dyn Write) -> std::io::Result<()> {
        out.write_all(b"{")?;
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                out.write_all(b",")?;
            }
            write_part(part, doc, keep, out)?;
        }
        out.write_all(b"}")
    }
}

fn keep(shown: &[bool], id: u32) -> bool {
    shown.get(id as usize).copied().unwrap_or(false)
}

/// The length of items written with a comma between each two, inside one pair of brackets.
fn joined(lens: impl Iterator<Item = usize>) -> usize {
    let (mut sum, mut n) = (0usize, 0usize);
    for l in lens {
        sum += l;
        n += 1;
    }
    2 + sum + n.saturating_sub(1)
}

fn part_len(p: &Part, keep: &dyn Fn(u32) -> bool) -> usize {
    match p {
        Part::Member { key, value } => key.len() + 1 + value.len(),
        Part::Map { key, runs } => key.len() + 1 + joined(runs.iter().filter(|r| keep(r.name)).map(|r| r.bytes.len())),
        Part::V3 { key, parts } => key.len() + 1 + joined(parts.iter().map(|p| part_len(p, keep))),
        Part::Info { key, value } => key.len() + 1 + value.len(),
        Part::Removed { key, entries } => {
            key.len() + 1 + joined(entries.iter().filter(|(id, _)| keep(*id)).map(|(_, e)| e.len()))
        }
    }
}

/// Writes `items` with a comma between each two, inside `open` and `close`.
fn write_joined<'i>(
    out: &mut dyn Write,
    open: u8,
    close: u8,
    items: impl Iterator<Item = &'i [u8]>,
) -> std::io::Result<()> {
    out.write_all(&[open])?;
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        out.write_all(item)?;
    }
    out.write_all(&[close])
}

fn write_part(p: &Part, doc: &[u8], keep: &dyn Fn(u32) -> bool, out: &mut dyn Write) -> std::io::Result<()> {
    let key = |out: &mut dyn Write, k: &Range<usize>| -> std::io::Result<()> {
        out.write_all(&doc[k.clone()])?;
        out.write_all(b":")
    };
    match p {
        Part::Member { key: k, value } => {
            key(out, k)?;
            out.write_all(&doc[value.clone()])
        }
        Part::Map { key: k, runs } => {
            key(out, k)?;
            write_joined(out, b'{', b'}', runs.iter().filter(|r| keep(r.name)).map(|r| &doc[r.bytes.clone()]))
        }
        Part::V3 { key: k, parts } => {
            key(out, k)?;
            out.write_all(b"{")?;
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                write_part(part, doc, keep, out)?;
            }
            out.write_all(b"}")
        }
        Part::Info { key: k, value } => {
            key(out, k)?;
            out.write_all(value)
        }
        Part::Removed { key: k, entries } => {
            key(out, k)?;
            write_joined(out, b'[', b']', entries.iter().filter(|(id, _)| keep(*id)).map(|(_, e)| &e[..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conda::filter::filter_repodata;
    use serde_json::Value;

    fn both(doc: &str, allow: &dyn Fn(&str) -> bool) -> (Value, Value) {
        let mut reference = Vec::new();
        filter_repodata(doc.as_bytes(), allow, &mut reference).unwrap();
        let spans = Spans::index(doc.as_bytes()).unwrap();
        let mut out = Vec::new();
        spans.render(doc.as_bytes(), allow, &mut out);
        let parse = |b: &[u8]| {
            serde_json::from_slice::<Value>(b)
                .unwrap_or_else(|e| panic!("invalid output {e}: {}", String::from_utf8_lossy(b)))
        };
        (parse(&reference), parse(&out))
    }

    const DOC: &str = r#"{
  "info": {"subdir": "noarch", "base_url": "https://cdn.example/c/"},
  "packages" : {
    "alpha-1.0-0.tar.bz2" : {"name": "alpha", "depends": ["beta >=1"], "size": 12},
    "alpha-1.1-0.tar.bz2": {"name": "alpha"},
    "not-a-package": {"name": "x"},
    "secret-thing-1.0-0.tar.bz2": {"name": "secret-thing", "depends": []},
    "alpha-1.2-0.tar.bz2": {"name": "alpha"}
  },
  "packages.conda": {
    "beta-1.0-0.conda": {"name": "beta", "weird": "a \"quoted\" } ] { [ string\\"},
    "secret-thing-2.0-0.conda": {"name": "secret-thing", "nested": {"a": [1, {"b": null}]}},
    "caf\u00e9-1.0-0.conda": {"name": "café"}
  },
  "removed": ["secret-thing-0.1-0.tar.bz2", "alpha-0.1-0.tar.bz2", 5, "junk"],
  "repodata_version": 1,
  "v3": {"whl": {"secret-thing-3.0-py_0": {"name": "secret-thing"}, "alpha-3.0-py_0": {"name": "alpha"}},
         "odd": 7}
}"#;

    #[test]
    fn every_permission_set_gives_what_the_single_pass_filter_gives() {
        let names = ["alpha", "beta", "secret-thing", "café", "not"];
        for mask in 0..(1u32 << names.len()) {
            let allow = |n: &str| names.iter().position(|&m| m == n).is_some_and(|i| mask & (1 << i) != 0);
            let (reference, spans) = both(DOC, &allow);
            assert_eq!(reference, spans, "mask {mask:b}");
            let index = Spans::index(DOC.as_bytes()).unwrap();
            let mut json = Vec::new();
            index.render(DOC.as_bytes(), &allow, &mut json);
            assert_eq!(index.view_len(&allow), json.len(), "mask {mask:b}: the announced length");
            for workers in [0, 2] {
                let zst = index.render_zst(DOC.as_bytes(), &allow, 3, workers).unwrap();
                assert_eq!(zstd::bulk::decompress(&zst, json.len()).unwrap(), json, "mask {mask:b}: the .zst");
            }
        }
    }

    #[test]
    fn records_of_one_name_make_one_run_and_allow_is_asked_once_per_name() {
        let spans = Spans::index(DOC.as_bytes()).unwrap();
        // Names alpha, not ("not-a-package" parses as name-version-build), secret-thing, beta, café; runs: in
        // `packages` alpha (two records), not, secret-thing, alpha again; three in `packages.conda`, two in `v3`.
        assert_eq!(spans.counts(), (5, 10, 9));
        assert!(spans.has_absolute_base_url());
        let asked = std::cell::RefCell::new(Vec::new());
        let allow = |n: &str| {
            asked.borrow_mut().push(n.to_owned());
            true
        };
        spans.render(DOC.as_bytes(), &allow, &mut Vec::new());
        assert_eq!(asked.borrow().len(), 5);
    }

    #[test]
    fn documents_the_filter_refuses_are_refused() {
        for bad in
            ["", "[]", "{", r#"{"packages": {"a-1-0.conda": }}"#, r#"{"info": [1]}"#, "{} x", r#"{"removed": 1}"#]
        {
            let mut out = Vec::new();
            assert!(filter_repodata(bad.as_bytes(), &|_| true, &mut out).is_err(), "{bad:?}");
            assert!(Spans::index(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }
}
