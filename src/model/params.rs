//! Inference parameters (`lang`, `psm`, ...) as every protocol delivers them, turned into
//! validated [`OcrOptions`]. Request-level parameters apply first, then the `image` tensor's,
//! which override them.

use std::time::Duration;

use crate::ocr::{Dpi, Languages, OcrOptions, Psm, Rotate};

use super::InferError;

/// A parameter value as the wire carries it (gRPC's oneof, or a JSON scalar).
#[derive(Clone, Debug, PartialEq)]
pub enum ParamValue<'a> {
    Bool(bool),
    Int(i64),
    Uint(u64),
    Double(f64),
    Str(&'a str),
}

/// Parameters that belong to the protocol or to clients' bookkeeping, not to OCR: accepted
/// without comment.
const PROTOCOL_PARAMS: &[&str] = &[
    "binary_data_size",
    "binary_data_output",
    "binary_data",
    "priority",
    "sequence_id",
    "sequence_start",
    "sequence_end",
    "headers",
];

/// Parameters of extensions tesserve does not implement. Ignoring them would return something
/// the client did not ask for, so they are refused.
const UNSUPPORTED_PARAMS: &[&str] = &[
    "shared_memory_region",
    "shared_memory_byte_size",
    "shared_memory_offset",
    "classification",
];

/// The longest character whitelist accepted.
const MAX_WHITELIST_CHARS: usize = 1024;

/// The longest `pages` specification accepted: ranges enough for any real selection.
const MAX_PAGES_SPEC: usize = 1024;

/// The language Tesseract's orientation detection runs with.
pub const OSD_LANG: &str = "osd";

/// Accumulates parameters into [`OcrOptions`] and a request timeout.
pub struct OptionsBuilder<'a> {
    languages: &'a Languages,
    options: OcrOptions,
    timeout: Option<Duration>,
    max_render_dpi: Dpi,
}

impl<'a> OptionsBuilder<'a> {
    pub fn new(languages: &'a Languages, defaults: OcrOptions, max_render_dpi: Dpi) -> Self {
        OptionsBuilder {
            languages,
            options: defaults,
            timeout: None,
            max_render_dpi,
        }
    }

    /// Applies one parameter. `place` says where it came from, for error messages:
    /// "request parameter" or "input 'image' parameter".
    pub fn apply(
        &mut self,
        place: &str,
        name: &str,
        value: ParamValue<'_>,
    ) -> Result<(), InferError> {
        let invalid = |expected: &str| {
            InferError::InvalidInput(format!(
                "{place} '{name}': expected {expected}, got {}",
                describe(&value)
            ))
        };
        match name {
            "lang" => {
                let spec = as_str(&value)
                    .ok_or_else(|| invalid("a language such as \"eng\" or \"eng+deu\""))?;
                self.options.lang =
                    self.languages
                        .parse(spec)
                        .map_err(|source| InferError::Lang {
                            place: place.to_owned(),
                            source,
                        })?;
            }
            "psm" => {
                self.options.psm = as_int(&value)
                    .and_then(Psm::new)
                    .ok_or_else(|| invalid("a page segmentation mode from 0 to 13"))?;
            }
            "dpi" => {
                let range = OcrOptions::MIN_DPI..=OcrOptions::MAX_DPI;
                let dpi = as_int(&value)
                    .and_then(|dpi| u32::try_from(dpi).ok())
                    .filter(|dpi| range.contains(dpi))
                    .ok_or_else(|| {
                        invalid(&format!(
                            "a resolution from {} to {} dpi",
                            range.start(),
                            range.end()
                        ))
                    })?;
                self.options.dpi = Some(dpi);
            }
            "render_dpi" => {
                let max = self.max_render_dpi.get();
                let dpi = as_int(&value)
                    .and_then(|dpi| u32::try_from(dpi).ok())
                    .filter(|dpi| (OcrOptions::MIN_DPI..=max).contains(dpi))
                    .and_then(|dpi| Dpi::new(dpi).ok())
                    .ok_or_else(|| {
                        invalid(&format!(
                            "a render resolution from {} to {max} dpi (the server's \
                             --max-render-dpi)",
                            OcrOptions::MIN_DPI
                        ))
                    })?;
                self.options.render_dpi = dpi;
            }
            "pages" => {
                // Parsed against each document's page count, which bounds the work.
                let spec = as_str(&value)
                    .map(str::to_owned)
                    .or_else(|| as_int(&value).map(|page| page.to_string()))
                    .filter(|spec| !spec.trim().is_empty() && spec.len() <= MAX_PAGES_SPEC)
                    .ok_or_else(|| invalid("pages such as \"1-3,5\" (1-based)"))?;
                self.options.pages = Some(spec);
            }
            "rotate" => {
                let rotate = as_str(&value)
                    .and_then(Rotate::parse)
                    .ok_or_else(|| invalid("\"off\" or \"auto\""))?;
                if rotate == Rotate::Auto && !self.languages.contains(OSD_LANG) {
                    return Err(InferError::InvalidInput(format!(
                        "{place} '{name}': \"auto\" needs {OSD_LANG}.traineddata, which is not \
                         installed (Debian: tesseract-ocr-osd)"
                    )));
                }
                self.options.rotate = rotate;
            }
            "char_whitelist" => {
                let chars = as_str(&value)
                    .filter(|s| !s.contains('\0') && s.chars().count() <= MAX_WHITELIST_CHARS)
                    .ok_or_else(|| {
                        invalid(&format!(
                            "a string of at most {MAX_WHITELIST_CHARS} characters"
                        ))
                    })?;
                self.options.char_whitelist = chars.to_owned();
            }
            "preserve_interword_spaces" => {
                self.options.preserve_interword_spaces =
                    as_bool(&value).ok_or_else(|| invalid("a boolean"))?;
            }
            // Triton's queue timeout, in microseconds: a deadline by another name.
            "timeout" => {
                let micros = as_int(&value)
                    .and_then(|us| u64::try_from(us).ok())
                    .ok_or_else(|| invalid("a timeout in microseconds"))?;
                self.timeout = (micros > 0).then(|| Duration::from_micros(micros));
            }
            _ if UNSUPPORTED_PARAMS.contains(&name) => {
                return Err(InferError::InvalidInput(format!(
                    "{place} '{name}': this server does not support that extension"
                )));
            }
            _ if PROTOCOL_PARAMS.contains(&name) || name.starts_with("triton_") => {}
            _ => tracing::info!(place, parameter = name, "ignoring unknown parameter"),
        }
        Ok(())
    }

    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    pub fn build(self) -> OcrOptions {
        self.options
    }
}

fn as_str<'v>(value: &ParamValue<'v>) -> Option<&'v str> {
    match value {
        ParamValue::Str(s) => Some(s),
        _ => None,
    }
}

/// Integers may arrive as any numeric type (tritonclient sends Python floats as doubles) or as
/// a decimal string (JSON users).
fn as_int(value: &ParamValue<'_>) -> Option<i64> {
    match *value {
        ParamValue::Int(i) => Some(i),
        ParamValue::Uint(u) => i64::try_from(u).ok(),
        ParamValue::Double(d) if d.fract() == 0.0 && d.abs() < 1e15 => Some(d as i64),
        ParamValue::Str(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn as_bool(value: &ParamValue<'_>) -> Option<bool> {
    match *value {
        ParamValue::Bool(b) => Some(b),
        ParamValue::Int(0) | ParamValue::Uint(0) => Some(false),
        ParamValue::Int(1) | ParamValue::Uint(1) => Some(true),
        ParamValue::Str(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Some(true),
            "false" | "0" | "no" | "off" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn describe(value: &ParamValue<'_>) -> String {
    match value {
        ParamValue::Bool(b) => format!("bool {b}"),
        ParamValue::Int(i) => format!("int {i}"),
        ParamValue::Uint(u) => format!("uint {u}"),
        ParamValue::Double(d) => format!("double {d}"),
        ParamValue::Str(s) => format!("string {s:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn languages() -> Languages {
        // Built from a directory listing so the test needs no Tesseract data.
        let dir = std::env::temp_dir().join(format!("tesserve-params-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for lang in ["eng", "deu"] {
            std::fs::write(dir.join(format!("{lang}.traineddata")), b"").unwrap();
        }
        Languages::scan(Path::new(&dir)).unwrap()
    }

    fn build(params: &[(&str, ParamValue<'_>)]) -> Result<OcrOptions, InferError> {
        let langs = languages();
        let defaults = OcrOptions::new(langs.parse("eng").unwrap());
        let mut builder = OptionsBuilder::new(&langs, defaults, Dpi::new(600).unwrap());
        for (name, value) in params {
            builder.apply("request parameter", name, value.clone())?;
        }
        Ok(builder.build())
    }

    #[test]
    fn every_ocr_parameter_is_applied() {
        let options = build(&[
            ("lang", ParamValue::Str("eng+deu")),
            ("psm", ParamValue::Uint(6)),
            ("dpi", ParamValue::Double(300.0)),
            ("char_whitelist", ParamValue::Str("0123456789")),
            ("preserve_interword_spaces", ParamValue::Str("true")),
            ("render_dpi", ParamValue::Int(150)),
            ("pages", ParamValue::Str("1-3,5")),
            ("rotate", ParamValue::Str("off")),
        ])
        .unwrap();
        assert_eq!(options.render_dpi.get(), 150);
        assert_eq!(options.pages.as_deref(), Some("1-3,5"));
        assert_eq!(options.lang.as_str(), "eng+deu");
        assert_eq!(options.psm.get(), 6);
        assert_eq!(options.dpi, Some(300));
        assert_eq!(options.char_whitelist, "0123456789");
        assert!(options.preserve_interword_spaces);
    }

    #[test]
    fn later_levels_override_earlier_ones() {
        let options = build(&[("psm", ParamValue::Int(6)), ("psm", ParamValue::Str("7"))]).unwrap();
        assert_eq!(options.psm.get(), 7);
    }

    #[test]
    fn invalid_values_name_the_parameter_and_the_value() {
        let err = build(&[("psm", ParamValue::Int(14))])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "request parameter 'psm': expected a page segmentation mode from 0 to 13, got int 14"
        );
        let err = build(&[("lang", ParamValue::Str("klingon"))])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "request parameter 'lang': language 'klingon' is not installed (installed: deu, eng)"
        );
        assert!(build(&[("dpi", ParamValue::Int(10))]).is_err());
        assert!(build(&[("preserve_interword_spaces", ParamValue::Str("maybe"))]).is_err());
        assert!(build(&[("char_whitelist", ParamValue::Str("a\0b"))]).is_err());
        assert!(build(&[("lang", ParamValue::Int(3))]).is_err());
        let err = build(&[("render_dpi", ParamValue::Int(1200))]).unwrap_err();
        assert!(err.to_string().contains("70 to 600 dpi"), "{err}");
        let err = build(&[("pages", ParamValue::Str(""))]).unwrap_err();
        assert!(
            err.to_string().starts_with("request parameter 'pages': "),
            "{err}"
        );
        // No osd.traineddata in the test's tessdata.
        let err = build(&[("rotate", ParamValue::Str("auto"))]).unwrap_err();
        assert!(err.to_string().contains("osd.traineddata"), "{err}");
        assert!(build(&[("rotate", ParamValue::Str("sideways"))]).is_err());
    }

    #[test]
    fn unknown_parameters_are_ignored_and_extensions_refused() {
        assert!(build(&[
            ("thr", ParamValue::Double(0.5)),
            ("priority", ParamValue::Uint(3))
        ])
        .is_ok());
        let err = build(&[("shared_memory_region", ParamValue::Str("r"))]).unwrap_err();
        assert!(matches!(err, InferError::InvalidInput(m) if m.contains("shared_memory_region")));
    }
}
