//! What a caller may ask of a recognition: language, segmentation, resolution, character
//! whitelist, and which outputs to compute. Every value is validated when it is built, so an
//! engine only ever sees settings Tesseract accepts.

use std::{collections::BTreeSet, fmt, path::Path};

use super::document::Dpi;

/// A Tesseract page segmentation mode, 0 to 13 (`tesseract --help-psm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Psm(u8);

impl Psm {
    /// Tesseract's own default: fully automatic page segmentation, no OSD.
    pub const AUTO: Psm = Psm(3);
    const MAX: i64 = 13;

    pub fn new(value: i64) -> Option<Psm> {
        (0..=Self::MAX).contains(&value).then_some(Psm(value as u8))
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

/// The traineddata languages found in the tessdata directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Languages(BTreeSet<String>);

impl Languages {
    /// Lists `*.traineddata` in `tessdata`.
    pub fn scan(tessdata: &Path) -> std::io::Result<Languages> {
        let mut found = BTreeSet::new();
        for entry in std::fs::read_dir(tessdata)? {
            let path = entry?.path();
            if path.extension().is_some_and(|ext| ext == "traineddata") {
                if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                    found.insert(stem.to_owned());
                }
            }
        }
        Ok(Languages(found))
    }

    pub fn contains(&self, lang: &str) -> bool {
        self.0.contains(lang)
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// Validates a language specification such as `eng` or `eng+deu` against what is installed.
    pub fn parse(&self, spec: &str) -> Result<Lang, LangError> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(LangError::Empty);
        }
        for part in spec.split('+') {
            if !self.contains(part) {
                return Err(LangError::NotInstalled {
                    requested: part.to_owned(),
                    installed: self.to_string(),
                });
            }
        }
        Ok(Lang(spec.to_owned()))
    }
}

impl fmt::Display for Languages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<&str> = self.iter().collect();
        f.write_str(&list.join(", "))
    }
}

/// A language specification whose every part is installed: `eng`, `eng+deu`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Lang(String);

impl Lang {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LangError {
    #[error("language is empty")]
    Empty,
    #[error("language '{requested}' is not installed (installed: {installed})")]
    NotInstalled {
        requested: String,
        installed: String,
    },
}

/// Per-request recognition settings. These map onto an allow-list of per-instance Tesseract
/// variables; nothing else is ever set from a request.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OcrOptions {
    pub lang: Lang,
    pub psm: Psm,
    /// Source resolution in dots per inch; Tesseract estimates it when absent.
    pub dpi: Option<u32>,
    /// Restricts recognition to these characters; empty means no restriction.
    pub char_whitelist: String,
    pub preserve_interword_spaces: bool,
    /// Whether each page is turned upright before recognition.
    pub rotate: Rotate,
    /// The resolution PDF pages are rendered at; TIFF pages keep their own pixels.
    pub render_dpi: Dpi,
    /// Which pages of a document to read, as the caller wrote them (`"1-3,5"`); all when
    /// absent. Checked against each document's page count.
    pub pages: Option<String>,
}

impl OcrOptions {
    /// The lowest resolution Tesseract accepts before it substitutes its own guess.
    pub const MIN_DPI: u32 = 70;
    pub const MAX_DPI: u32 = 2400;

    pub fn new(lang: Lang) -> OcrOptions {
        OcrOptions {
            lang,
            psm: Psm::AUTO,
            dpi: None,
            char_whitelist: String::new(),
            preserve_interword_spaces: false,
            rotate: Rotate::Off,
            render_dpi: Dpi::DEFAULT,
            pages: None,
        }
    }
}

/// Orientation handling, the `rotate` parameter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Rotate {
    /// Pages are read as they are stored (after a PDF's `/Rotate`).
    #[default]
    Off,
    /// Tesseract's orientation detection (`osd.traineddata`) decides each page's orientation,
    /// and a page is turned when the detection is confident enough.
    Auto,
}

impl Rotate {
    pub fn parse(value: &str) -> Option<Rotate> {
        match value.trim().to_ascii_lowercase().as_str() {
            "off" | "none" | "false" => Some(Rotate::Off),
            "auto" | "true" => Some(Rotate::Auto),
            _ => None,
        }
    }
}

/// One output of the model. The order of [`OutputKind::ALL`] is the model's output order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutputKind {
    /// The recognised text, UTF-8.
    Text,
    /// Mean word confidence in 0..=1.
    Confidence,
    /// A JSON array of `{"text","conf","x1","y1","x2","y2"}`, one entry per word.
    Words,
    /// The page as hOCR (HTML).
    Hocr,
    /// Tesseract's TSV: one row per page, block, paragraph, line and word.
    Tsv,
    /// An ALTO XML document (version 3), one `Page` per page.
    Alto,
    /// A searchable PDF: each page's image with an invisible text layer. Binary.
    Pdf,
    /// A JSON array with one entry per page: size, resolution, text, confidence, orientation
    /// and timings.
    Pages,
}

impl OutputKind {
    pub const ALL: [OutputKind; 8] = [
        OutputKind::Text,
        OutputKind::Confidence,
        OutputKind::Words,
        OutputKind::Hocr,
        OutputKind::Tsv,
        OutputKind::Alto,
        OutputKind::Pdf,
        OutputKind::Pages,
    ];

    /// What a request that names no outputs gets: everything but the outputs that cost extra
    /// work (ALTO, the PDF) or only matter for documents (pages).
    pub const DEFAULT: [OutputKind; 5] = [
        OutputKind::Text,
        OutputKind::Confidence,
        OutputKind::Words,
        OutputKind::Hocr,
        OutputKind::Tsv,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OutputKind::Text => "text",
            OutputKind::Confidence => "confidence",
            OutputKind::Words => "words",
            OutputKind::Hocr => "hocr",
            OutputKind::Tsv => "tsv",
            OutputKind::Alto => "alto",
            OutputKind::Pdf => "pdf",
            OutputKind::Pages => "pages",
        }
    }

    /// Binary outputs travel as `{"b64": ...}` in JSON, never through a lossy UTF-8 string.
    pub fn is_binary(self) -> bool {
        self == OutputKind::Pdf
    }

    pub fn from_name(name: &str) -> Option<OutputKind> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    fn bit(self) -> u16 {
        1 << self as u16
    }
}

impl fmt::Display for OutputKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which outputs a recognition must compute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OutputSet(u16);

// One bit per kind.
const _: () = assert!(OutputKind::ALL.len() <= u16::BITS as usize);

impl OutputSet {
    pub fn all() -> OutputSet {
        OutputKind::ALL.into_iter().collect()
    }

    pub fn contains(self, kind: OutputKind) -> bool {
        self.0 & kind.bit() != 0
    }

    pub fn with(self, kind: OutputKind) -> OutputSet {
        OutputSet(self.0 | kind.bit())
    }

    pub fn without(self, kind: OutputKind) -> OutputSet {
        OutputSet(self.0 & !kind.bit())
    }
}

impl FromIterator<OutputKind> for OutputSet {
    fn from_iter<I: IntoIterator<Item = OutputKind>>(iter: I) -> OutputSet {
        OutputSet(iter.into_iter().fold(0, |bits, kind| bits | kind.bit()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn installed(langs: &[&str]) -> Languages {
        Languages(langs.iter().map(|l| l.to_string()).collect())
    }

    #[test]
    fn psm_accepts_only_tesseract_modes() {
        assert_eq!(Psm::new(0).map(Psm::get), Some(0));
        assert_eq!(Psm::new(13).map(Psm::get), Some(13));
        assert_eq!(Psm::new(14), None);
        assert_eq!(Psm::new(-1), None);
    }

    #[test]
    fn language_parts_must_all_be_installed() {
        let langs = installed(&["eng", "deu", "osd"]);
        assert_eq!(langs.parse("eng+deu").unwrap().as_str(), "eng+deu");
        assert_eq!(
            langs.parse("eng+fra"),
            Err(LangError::NotInstalled {
                requested: "fra".into(),
                installed: "deu, eng, osd".into()
            })
        );
        assert_eq!(langs.parse(" "), Err(LangError::Empty));
        // Path tricks never reach Tesseract: they are simply not installed languages.
        assert!(langs.parse("../eng").is_err());
        assert!(langs.parse("eng+").is_err());
    }

    #[test]
    fn output_set_holds_exactly_what_was_collected() {
        let set: OutputSet = [OutputKind::Text, OutputKind::Tsv].into_iter().collect();
        assert!(set.contains(OutputKind::Text));
        assert!(set.contains(OutputKind::Tsv));
        assert!(!set.contains(OutputKind::Words));
        assert!(OutputKind::ALL
            .iter()
            .all(|k| OutputSet::all().contains(*k)));
        assert_eq!(OutputKind::from_name("hocr"), Some(OutputKind::Hocr));
        assert_eq!(OutputKind::from_name("HOCR"), None);
    }
}
