//! A bounded look at a PDF's page tree, taken before hayro sees the file.
//!
//! hayro-syntax builds its whole page list inside `Pdf::new`, about a kilobyte per page, and
//! offers no public way to reach the cross-reference table or the page tree without it (its xref
//! constructors are crate-private). So the page limit, checked on `Pdf::new`'s result, would only
//! be applied after the memory was spent: 100,000 inline page dictionaries in a 1.4 MB file cost
//! ~107 MB, and the byte limit or compressed object streams allow far worse. This pre-scan reads
//! just enough of the file itself to refuse such a tree first, and uses hayro-syntax's public
//! object parser so that what it reads is what hayro will read.
//!
//! It trusts nothing it finds. The page tree's `/Count` is a claim, so a claim over the limit is
//! refused at once (no honest file overstates its length). A claim under the limit proves
//! nothing, so the tree is also walked the way hayro walks it (each reference followed once, a
//! `/Type /Pages` kid descended into, any other dictionary counted as a page), but against a
//! budget: the walk stops as soon as it has seen one page more than the limit, or examined more
//! kids than [`node_budget`], or nested deeper than [`MAX_DEPTH`], or read more bytes of
//! `/Kids` arrays than the file holds (one array shared by many nodes is parsed whole each time).
//! It never recurses; what it holds (the reference set, the stack) is bounded by the node
//! budget, and what it parses by the budget and the file's length, so its cost follows the limit
//! rather than the file's claims.
//!
//! What it cannot reach, it does not judge: [`PreCheck::Inconclusive`] sends the file on to hayro,
//! whose count is then checked as before (still correct, only not before the allocation). That is
//! the case for
//! - cross-reference *streams* (PDF 1.5+) and page-tree objects inside compressed object streams,
//!   which would need a Flate decoder and an object-stream reader of our own: the bomb stays
//!   possible there, bounded only by the byte limit;
//! - files whose table is missing or wrong, which hayro repairs by scanning the whole file, and
//!   hayro's brute-force page search when the tree has no `/Kids` (every page-like dictionary in
//!   the file becomes a page, again bounded only by the byte limit);
//! - kids, or `/Kids` arrays, behind references the classic table does not resolve (a hybrid
//!   file's `/XRefStm` objects among them).
//!
//! A walk that could not resolve every reference still refuses when it found too many pages:
//! what it counted hayro counts too, with two hostile exceptions that only make the refusal
//! earlier (a node whose `/Type` is a reference is taken for a page, and a page dictionary hayro
//! itself rejects still counts).

use std::collections::HashSet;

use hayro::hayro_syntax::{
    object::{Array, Dict, MaybeRef, Name, Number, ObjRef, Object, ObjectIdentifier},
    reader::{Reader, ReaderExt},
};

/// Deeper than any honest tree (a balanced one of a million pages is a handful of levels), and
/// small enough that the walk's stack stays tiny.
pub(crate) const MAX_DEPTH: usize = 256;

/// How far from the end of the file `startxref` may sit.
const STARTXREF_WINDOW: usize = 1024;

/// Updated files chain one table per revision through `/Prev`; past this the chain is hostile.
const MAX_SECTIONS: usize = 256;

/// Subsection headers kept across the whole chain; each lookup scans them, so this and the node
/// budget bound the walk's time together. Past it the file is left to hayro.
const MAX_SUBSECTIONS: usize = 4096;

/// How many kids the walk may examine for a limit of `max_pages`: every page, the intermediate
/// nodes of any sane tree (fewer than its pages), and slack for the odd null or repeated kid.
pub(crate) fn node_budget(max_pages: usize) -> usize {
    max_pages.saturating_mul(4).saturating_add(256)
}

/// What the pre-scan learned. `nodes` counts the kids examined, the work done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PreCheck {
    /// The whole tree was walked: `pages` pages, within the limit.
    Counted { pages: usize, nodes: usize },
    /// Some or all of the tree was out of reach (see the module docs); hayro's count decides.
    Inconclusive { pages: usize, nodes: usize },
    /// A `/Count` claims more pages than the limit.
    CountOverLimit { claimed: usize },
    /// The walk found one page more than the limit and stopped there.
    PagesOverLimit { nodes: usize },
    /// The walk examined [`node_budget`] kids without reaching the limit in pages, or read
    /// `/Kids` arrays by reference over more bytes than the file has (one array shared by many
    /// nodes, each read in full before its first kid).
    TooManyNodes { pages: usize },
    /// The tree nests deeper than [`MAX_DEPTH`].
    TooDeep,
}

/// Reads the page tree of `data` under a limit of `max_pages`, before any of it is allocated.
pub(crate) fn precheck(data: &[u8], max_pages: usize) -> PreCheck {
    let unreachable = PreCheck::Inconclusive { pages: 0, nodes: 0 };
    let Some(xref) = Xref::read(data) else {
        return unreachable;
    };
    let Some(catalog) = xref.root.and_then(|root| xref.dict(root)) else {
        return unreachable;
    };
    let Some(root) = catalog.get_raw::<Dict<'_>>(b"Pages") else {
        return unreachable;
    };
    let (root, root_id) = match root {
        MaybeRef::Ref(r) => match xref.dict(r) {
            Some(dict) => (dict, Some(r)),
            None => return unreachable,
        },
        MaybeRef::NotRef(dict) => (dict, None),
    };
    Walk {
        xref: &xref,
        max_pages,
        budget: node_budget(max_pages),
        pages: 0,
        nodes: 0,
        complete: true,
        visited: HashSet::new(),
        kids_read: 0,
    }
    .run(root, root_id)
}

struct Walk<'x, 'a> {
    xref: &'x Xref<'a>,
    max_pages: usize,
    budget: usize,
    pages: usize,
    nodes: usize,
    /// False once a reference could not be resolved here (hayro may still resolve it).
    complete: bool,
    visited: HashSet<ObjRef>,
    /// Bytes of `/Kids` arrays read by reference.
    kids_read: usize,
}

impl<'a> Walk<'_, 'a> {
    fn run(mut self, root: Dict<'a>, root_id: Option<ObjRef>) -> PreCheck {
        if let Some(id) = root_id {
            self.visited.insert(id);
        }
        if let Some(claimed) = self.over_claim(&root) {
            return PreCheck::CountOverLimit { claimed };
        }
        let Some(kids) = self.kids(&root) else {
            // hayro falls back to a brute-force search, out of reach here.
            return PreCheck::Inconclusive { pages: 0, nodes: 0 };
        };
        let mut stack = vec![kids];
        while let Some(frame) = stack.last_mut() {
            let Some(kid) = frame.next() else {
                stack.pop();
                continue;
            };
            self.nodes += 1;
            if self.nodes > self.budget {
                return PreCheck::TooManyNodes { pages: self.pages };
            }
            let dict = match kid {
                MaybeRef::Ref(r) => {
                    if !self.visited.insert(r) {
                        continue;
                    }
                    match self.xref.dict(r) {
                        Some(dict) => dict,
                        None => {
                            self.complete = false;
                            continue;
                        }
                    }
                }
                MaybeRef::NotRef(object) => match object.into_dict() {
                    Some(dict) => dict,
                    None => continue,
                },
            };
            if matches!(dict.get::<Name<'_>>(b"Type").as_deref(), Some(b"Pages")) {
                if let Some(claimed) = self.over_claim(&dict) {
                    return PreCheck::CountOverLimit { claimed };
                }
                if let Some(kids) = self.kids(&dict) {
                    if self.kids_read > self.xref.data.len() {
                        return PreCheck::TooManyNodes { pages: self.pages };
                    }
                    if stack.len() >= MAX_DEPTH {
                        return PreCheck::TooDeep;
                    }
                    stack.push(kids);
                }
            } else {
                self.pages += 1;
                if self.pages > self.max_pages {
                    return PreCheck::PagesOverLimit { nodes: self.nodes };
                }
            }
        }
        if self.complete {
            PreCheck::Counted {
                pages: self.pages,
                nodes: self.nodes,
            }
        } else {
            PreCheck::Inconclusive {
                pages: self.pages,
                nodes: self.nodes,
            }
        }
    }

    /// The node's `/Count`, when it claims more than the limit.
    fn over_claim(&self, node: &Dict<'a>) -> Option<usize> {
        let count = node.get::<Number>(b"Count")?.as_f64();
        // `as` saturates: a claim of 1e30 pages is usize::MAX pages.
        (count > self.max_pages as f64).then_some(count as usize)
    }

    /// An iterator over the node's `/Kids`, direct or by reference.
    fn kids(
        &mut self,
        node: &Dict<'a>,
    ) -> Option<hayro::hayro_syntax::object::array::ArrayIter<'a>> {
        let array = match node.get_raw::<Array<'a>>(b"Kids")? {
            MaybeRef::NotRef(array) => array,
            MaybeRef::Ref(r) => {
                let array = self
                    .xref
                    .object_at(r)
                    .and_then(|mut o| o.read_without_context::<Array<'a>>());
                let Some(array) = array else {
                    self.complete = false;
                    return None;
                };
                self.kids_read = self.kids_read.saturating_add(array.data().len());
                array
            }
        };
        Some(array.raw_iter())
    }
}

/// One subsection of a classic cross-reference table.
struct Subsection {
    first: u32,
    count: u32,
    /// Offset of its first entry.
    at: usize,
    /// Bytes per entry: 20 by the standard, 19 from writers that end lines with a bare `\n`.
    width: usize,
}

/// The classic (uncompressed) cross-reference tables of a file, newest first, read lazily: only
/// subsection headers are kept, entries are looked up in place.
struct Xref<'a> {
    data: &'a [u8],
    subsections: Vec<Subsection>,
    root: Option<ObjRef>,
}

impl<'a> Xref<'a> {
    fn read(data: &'a [u8]) -> Option<Xref<'a>> {
        let mut xref = Xref {
            data,
            subsections: Vec::new(),
            root: None,
        };
        let mut next = Some(find_startxref(data)?);
        let mut seen = HashSet::new();
        while let Some(offset) = next.take() {
            if seen.len() >= MAX_SECTIONS || !seen.insert(offset) {
                break;
            }
            let trailer = xref.read_section(offset)?;
            if xref.root.is_none() {
                xref.root = trailer.get_ref(b"Root");
            }
            next = trailer
                .get::<Number>(b"Prev")
                .and_then(|n| usize::try_from(n.as_i64()).ok());
        }
        Some(xref)
    }

    /// Reads the table at `offset` (keeping its subsection headers) and returns its trailer.
    fn read_section(&mut self, offset: usize) -> Option<Dict<'a>> {
        let mut r = Reader::new(self.data);
        r.jump(offset);
        r.skip_white_spaces_and_comments();
        // An xref stream (`N 0 obj`) lands here too, and is out of reach.
        r.forward_tag(b"xref")?;
        loop {
            r.skip_white_spaces_and_comments();
            if r.forward_tag(b"trailer").is_some() {
                r.skip_white_spaces_and_comments();
                return r.read_without_context::<Dict<'a>>();
            }
            let first = r.read_without_context::<u32>()?;
            r.skip_white_spaces();
            let count = r.read_without_context::<u32>()?;
            r.forward_while(|b| b == b' ');
            r.forward_while(|b| b == b'\r' || b == b'\n');
            let at = r.offset();
            let width = entry_width(self.data.get(at..)?);
            let len = usize::try_from(count).ok()?.checked_mul(width)?;
            r.skip_bytes(len)?;
            if self.subsections.len() >= MAX_SUBSECTIONS {
                return None;
            }
            self.subsections.push(Subsection {
                first,
                count,
                at,
                width,
            });
        }
    }

    /// A reader placed just after `N G obj` for `r`, if the table puts it where it says.
    fn object_at(&self, r: ObjRef) -> Option<Reader<'a>> {
        // The newest subsection naming the object decides, a free entry included.
        let sub = self
            .subsections
            .iter()
            .find(|s| r.obj_number >= s.first && r.obj_number - s.first < s.count)?;
        let index = usize::try_from(r.obj_number - sub.first).ok()?;
        let at = sub.at.checked_add(index.checked_mul(sub.width)?)?;
        let entry = self.data.get(at..at.checked_add(18)?)?;
        if entry.get(17) != Some(&b'n') {
            return None;
        }
        let offset = digits(entry.get(..10)?)?;
        let mut reader = Reader::new(self.data);
        reader.jump(offset);
        let id = reader.read_without_context::<ObjectIdentifier>()?;
        if id != ObjectIdentifier::from(r) {
            return None;
        }
        reader.skip_white_spaces_and_comments();
        Some(reader)
    }

    fn dict(&self, r: ObjRef) -> Option<Dict<'a>> {
        self.object_at(r)?.read_without_context::<Dict<'a>>()
    }
}

/// The entry width of a subsection, from its first entry: 18 bytes of `oooooooooo ggggg n` and
/// the end of line (one or two bytes).
fn entry_width(entries: &[u8]) -> usize {
    let eol = entries
        .iter()
        .skip(18)
        .take(2)
        .take_while(|b| b.is_ascii_whitespace())
        .count();
    18 + eol.max(1)
}

/// A run of ASCII digits as a number; `None` if anything else is in it.
fn digits(bytes: &[u8]) -> Option<usize> {
    bytes.iter().try_fold(0usize, |n, &b| {
        b.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(usize::from(b - b'0')))
            .flatten()
    })
}

/// The offset after the last `startxref` near the end of the file.
fn find_startxref(data: &[u8]) -> Option<usize> {
    let tail_start = data.len().saturating_sub(STARTXREF_WINDOW);
    let tail = data.get(tail_start..)?;
    let at = tail.windows(9).rposition(|w| w == b"startxref")?;
    let mut r = Reader::new(data);
    r.jump(tail_start + at + 9);
    r.skip_white_spaces_and_comments();
    let offset = r.read_without_context::<Object<'_>>()?;
    let offset = match offset {
        Object::Number(n) => n.as_i64(),
        _ => return None,
    };
    usize::try_from(offset).ok().filter(|&o| o < data.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `objects` (numbered from 1) as a PDF with a correct cross-reference table.
    fn hand_pdf(objects: &[String]) -> Vec<u8> {
        let mut out = b"%PDF-1.7\n".to_vec();
        let mut offsets = Vec::new();
        for (i, body) in objects.iter().enumerate() {
            offsets.push(out.len());
            out.extend(format!("{} 0 obj\n{body}\nendobj\n", i + 1).bytes());
        }
        let xref = out.len();
        out.extend(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).bytes());
        for offset in offsets {
            out.extend(format!("{offset:010} 00000 n \n").bytes());
        }
        out.extend(
            format!(
                "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
                objects.len() + 1
            )
            .bytes(),
        );
        out
    }

    fn tree(count: usize, kids: &str) -> Vec<u8> {
        hand_pdf(&[
            "<< /Type /Catalog /Pages 2 0 R >>".into(),
            format!("<< /Type /Pages /Count {count} /MediaBox [0 0 612 792] /Kids [{kids}] >>"),
        ])
    }

    #[test]
    fn the_100000_page_bomb_is_refused_on_its_claim() {
        let file = tree(100_000, &"<</Type/Page>>".repeat(100_000));
        assert_eq!(
            precheck(&file, 50),
            PreCheck::CountOverLimit { claimed: 100_000 }
        );
    }

    #[test]
    fn a_bomb_lying_in_its_count_stops_one_page_past_the_limit() {
        let file = tree(1, &"<</Type/Page>>".repeat(100_000));
        // 51 kids examined of 100,000: the walk's work is the limit's, not the file's.
        assert_eq!(precheck(&file, 50), PreCheck::PagesOverLimit { nodes: 51 });
    }

    #[test]
    fn a_bomb_of_referenced_pages_lying_in_its_count_is_refused() {
        let n = 100_000;
        let mut objects = vec![
            "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
            String::new(),
        ];
        let kids: Vec<String> = (3..n + 3).map(|i| format!("{i} 0 R")).collect();
        objects[1] = format!("<< /Type /Pages /Count 2 /Kids [{}] >>", kids.join(" "));
        objects.extend((0..n).map(|_| "<< /Type /Page /Parent 2 0 R >>".to_string()));
        let file = hand_pdf(&objects);
        assert_eq!(precheck(&file, 50), PreCheck::PagesOverLimit { nodes: 51 });
    }

    #[test]
    fn a_tree_of_empty_nodes_runs_out_of_budget() {
        let file = tree(0, &"<</Type/Pages/Kids[]>>".repeat(100_000));
        assert_eq!(precheck(&file, 50), PreCheck::TooManyNodes { pages: 0 });
        assert_eq!(node_budget(50), 456);
    }

    #[test]
    fn one_kids_array_shared_by_many_nodes_is_read_over_once_at_most() {
        // 1,000 inline nodes all naming object 3, a 10 kB array of nulls: a walk that read it
        // for each would parse 10 MB from a 30 kB file.
        let file = hand_pdf(&[
            "<< /Type /Catalog /Pages 2 0 R >>".into(),
            format!(
                "<< /Type /Pages /Count 0 /Kids [{}] >>",
                "<</Type/Pages/Kids 3 0 R>>".repeat(1000)
            ),
            format!("[{}]", "null ".repeat(2000)),
        ]);
        assert_eq!(precheck(&file, 5_000), PreCheck::TooManyNodes { pages: 0 });
    }

    #[test]
    fn a_deep_chain_of_nodes_is_refused() {
        // Each node an object of its own, so no single object nests deeply: 300 levels of one
        // kid each, then a page.
        let depth = 300;
        let mut objects = vec!["<< /Type /Catalog /Pages 2 0 R >>".to_string()];
        objects.extend(
            (2..depth + 2).map(|i| format!("<< /Type /Pages /Count 1 /Kids [{} 0 R] >>", i + 1)),
        );
        objects.push("<< /Type /Page >>".into());
        assert_eq!(precheck(&hand_pdf(&objects), 50), PreCheck::TooDeep);
        // The same chain, shallow enough, is an honest (if odd) one-page tree.
        let mut objects = vec!["<< /Type /Catalog /Pages 2 0 R >>".to_string()];
        objects
            .extend((2..12).map(|i| format!("<< /Type /Pages /Count 1 /Kids [{} 0 R] >>", i + 1)));
        objects.push("<< /Type /Page >>".into());
        assert_eq!(
            precheck(&hand_pdf(&objects), 50),
            PreCheck::Counted {
                pages: 1,
                nodes: 10
            }
        );
    }

    #[test]
    fn an_honest_tree_is_counted_through_intermediate_nodes_and_shared_kids() {
        let file = hand_pdf(&[
            "<< /Type /Catalog /Pages 2 0 R >>".into(),
            "<< /Type /Pages /Count 3 /Kids [3 0 R 4 0 R 4 0 R 2 0 R] >>".into(),
            "<< /Type /Pages /Count 2 /Parent 2 0 R /Kids 6 0 R >>".into(),
            "<< /Type /Page /Parent 2 0 R >>".into(),
            "<< /Type /Page /Parent 3 0 R >>".into(),
            "[5 0 R 7 0 R]".into(),
            "<< /Type /Page /Parent 3 0 R >>".into(),
        ]);
        // 4 and 2 repeat and are skipped, as hayro skips them.
        assert_eq!(
            precheck(&file, 50),
            PreCheck::Counted { pages: 3, nodes: 6 }
        );
        assert_eq!(precheck(&file, 2), PreCheck::CountOverLimit { claimed: 3 });
    }

    #[test]
    fn a_pdf_writer_file_is_counted_in_full() {
        use pdf_writer::{Pdf, Rect, Ref};
        let mut pdf = Pdf::new();
        let (catalog, tree) = (Ref::new(1), Ref::new(2));
        let kids: Vec<Ref> = (3..6).map(Ref::new).collect();
        pdf.catalog(catalog).pages(tree);
        pdf.pages(tree).kids(kids.iter().copied()).count(3);
        for &kid in &kids {
            pdf.page(kid)
                .parent(tree)
                .media_box(Rect::new(0.0, 0.0, 612.0, 792.0));
        }
        let file = pdf.finish();
        assert_eq!(
            precheck(&file, 50),
            PreCheck::Counted { pages: 3, nodes: 3 }
        );
        assert_eq!(precheck(&file, 2), PreCheck::CountOverLimit { claimed: 3 });
    }

    #[test]
    fn what_is_out_of_reach_is_left_to_hayro() {
        // No table at all.
        assert_eq!(
            precheck(b"%PDF-1.7\n1 0 obj << >> endobj", 50),
            PreCheck::Inconclusive { pages: 0, nodes: 0 }
        );
        // A kid the table does not list.
        let file = tree(1, "9 0 R <</Type/Page>>");
        assert_eq!(
            precheck(&file, 50),
            PreCheck::Inconclusive { pages: 1, nodes: 2 }
        );
    }

    #[test]
    fn hostile_tables_do_not_panic() {
        let file = tree(3, "<</Type/Page>>");
        for cut in 0..file.len() {
            let _ = precheck(&file[..cut], 5);
            let mut damaged = file.clone();
            damaged[cut] = b'9';
            let _ = precheck(&damaged, 5);
        }
        let huge = b"%PDF-1.7\nxref\n0 4294967295\nstartxref\n9\n%%EOF".to_vec();
        assert!(matches!(precheck(&huge, 5), PreCheck::Inconclusive { .. }));
    }
}
