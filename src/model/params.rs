//! Inference parameters (`lang`, `psm`, ...) as every protocol delivers them, turned into
//! validated [`OcrOptions`]. Request-level parameters apply first, then the `image` tensor's,
//! which override them.

use std::time::Duration;

use crate::ocr::{Languages, OcrOptions, Psm};

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

/// Accumulates parameters into [`OcrOptions`] and a request timeout.
pub struct OptionsBuilder<'a> {
    languages: &'a Languages,
    options: OcrOptions,
    timeout: Option<Duration>,
}

impl<'a> OptionsBuilder<'a> {
    pub fn new(languages: &'a Languages, defaults: OcrOptions) -> Self {
        OptionsBuilder {
            languages,
            options: defaults,
            timeout: None,
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
        let mut builder = OptionsBuilder::new(&langs, defaults);
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
        ])
        .unwrap();
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
