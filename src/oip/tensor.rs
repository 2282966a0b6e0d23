//! Tensor encodings shared by every OIP transport: the BYTES framing of raw contents, the shapes
//! the `image` input may take, and the model's outputs as tensors.

use bytes::{Buf, BufMut, Bytes};

use crate::{
    model::{InferError, INPUT_NAME},
    ocr::{output, ImageInput, OcrResult, OutputKind, RawPixels},
};

/// Splits raw BYTES contents: each element is a little-endian u32 length and that many bytes.
/// The elements are zero-copy slices of `raw`, which must be consumed exactly.
pub fn split_bytes(raw: &Bytes) -> Result<Vec<Bytes>, InferError> {
    let mut rest = raw.clone();
    let mut elements = Vec::new();
    while !rest.is_empty() {
        let index = elements.len();
        if rest.len() < 4 {
            return Err(invalid(format!(
                "raw contents: element {index} has a truncated length prefix ({} of 4 bytes)",
                rest.len()
            )));
        }
        let len = rest.get_u32_le() as usize;
        if len > rest.len() {
            return Err(invalid(format!(
                "raw contents: element {index} declares {len} bytes but only {} remain",
                rest.len()
            )));
        }
        elements.push(rest.split_to(len));
    }
    Ok(elements)
}

/// Frames BYTES elements for raw contents: the inverse of [`split_bytes`].
pub fn frame_bytes<'a>(elements: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for element in elements {
        out.put_u32_le(element.len() as u32);
        out.put_slice(element);
    }
    out
}

/// The number of elements a shape holds, refusing negative or overflowing dimensions.
pub fn element_count(shape: &[i64]) -> Result<usize, InferError> {
    shape.iter().try_fold(1usize, |count, &dim| {
        usize::try_from(dim)
            .ok()
            .and_then(|dim| count.checked_mul(dim))
            .ok_or_else(|| invalid(format!("shape {shape:?} is not a valid tensor shape")))
    })
}

/// A BYTES `image` tensor: each element is one encoded image file.
pub fn encoded_images(shape: &[i64], elements: Vec<Bytes>) -> Result<Vec<ImageInput>, InferError> {
    if shape.is_empty() {
        return Err(invalid(
            "BYTES shape [] is not accepted; use [N] for N image files".to_owned(),
        ));
    }
    let expected = element_count(shape)?;
    if elements.len() != expected {
        return Err(invalid(format!(
            "shape {shape:?} holds {expected} elements but {} were sent",
            elements.len()
        )));
    }
    Ok(elements.into_iter().map(ImageInput::Encoded).collect())
}

/// A UINT8 `image` tensor of raw pixels: [H,W], [H,W,C] or [N,H,W,C] with C in {1, 3, 4}.
/// Each image is a zero-copy slice of `data`.
pub fn pixel_images(shape: &[i64], data: Bytes) -> Result<Vec<ImageInput>, InferError> {
    let expected = element_count(shape)?;
    let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let (count, height, width, channels) = match dims[..] {
        [h, w] => (1, h, w, 1),
        [h, w, c] => (1, h, w, c),
        [n, h, w, c] => (n, h, w, c),
        _ => {
            return Err(invalid(format!(
                "UINT8 shape {shape:?} is not accepted; expected [H,W], [H,W,C] or [N,H,W,C]"
            )))
        }
    };
    if data.len() != expected {
        return Err(invalid(format!(
            "shape {shape:?} holds {expected} bytes but {} were sent",
            data.len()
        )));
    }
    if count == 0 {
        return Ok(Vec::new());
    }
    let stride = expected / count as usize;
    (0..count as usize)
        .map(|index| {
            let pixels = data.slice(index * stride..(index + 1) * stride);
            RawPixels::new(pixels, width, height, channels)
                .map(ImageInput::Raw)
                .map_err(|source| InferError::Image { index, source })
        })
        .collect()
}

/// One output of the model across a batch, ready to encode.
#[derive(Debug, PartialEq)]
pub enum OutputTensor {
    Bytes(Vec<Bytes>),
    Fp32(Vec<f32>),
}

impl OutputTensor {
    /// Moves `kind`'s values out of the results (each is read once per response).
    pub fn take(kind: OutputKind, results: &mut [OcrResult]) -> OutputTensor {
        let mut bytes = |pick: fn(&mut OcrResult) -> Option<Bytes>| {
            OutputTensor::Bytes(
                results
                    .iter_mut()
                    .map(|r| pick(r).unwrap_or_default())
                    .collect(),
            )
        };
        match kind {
            OutputKind::Text => bytes(|r| r.text.take().map(Bytes::from)),
            OutputKind::Hocr => bytes(|r| r.hocr.take().map(Bytes::from)),
            OutputKind::Tsv => bytes(|r| r.tsv.take().map(Bytes::from)),
            OutputKind::Alto => bytes(|r| r.alto.take().map(Bytes::from)),
            OutputKind::Pdf => bytes(|r| r.pdf.take()),
            OutputKind::Words => bytes(|r| {
                let words = r.words.take().unwrap_or_default();
                serde_json::to_string(&words).ok().map(Bytes::from)
            }),
            OutputKind::Pages => bytes(|r| Some(Bytes::from(output::pages_json(&r.pages)))),
            OutputKind::Confidence => OutputTensor::Fp32(
                results
                    .iter()
                    .map(|r| r.confidence.unwrap_or_default())
                    .collect(),
            ),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            OutputTensor::Bytes(values) => values.len(),
            OutputTensor::Fp32(values) => values.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw encoding: framed BYTES, or little-endian FP32.
    pub fn to_raw(&self) -> Vec<u8> {
        match self {
            OutputTensor::Bytes(values) => frame_bytes(values.iter().map(|v| &v[..])),
            OutputTensor::Fp32(values) => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

fn invalid(message: String) -> InferError {
    InferError::InvalidInput(format!("input '{INPUT_NAME}': {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_framing_round_trips() {
        let framed = frame_bytes([&b"ab"[..], b"", b"xyz"]);
        assert_eq!(framed, b"\x02\0\0\0ab\0\0\0\0\x03\0\0\0xyz");
        let elements = split_bytes(&Bytes::from(framed)).unwrap();
        assert_eq!(elements, vec![&b"ab"[..], b"", b"xyz"]);
    }

    #[test]
    fn bytes_framing_errors_name_the_element() {
        let overlong = Bytes::from_static(b"\x02\0\0\0ab\x09\0\0\0abc");
        assert_eq!(
            split_bytes(&overlong).unwrap_err().to_string(),
            "input 'image': raw contents: element 1 declares 9 bytes but only 3 remain"
        );
        let truncated = Bytes::from_static(b"\x01\0\0\0a\x01\0");
        assert_eq!(
            split_bytes(&truncated).unwrap_err().to_string(),
            "input 'image': raw contents: element 1 has a truncated length prefix (2 of 4 bytes)"
        );
    }

    #[test]
    fn shapes_must_match_their_elements() {
        let two = vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")];
        assert_eq!(encoded_images(&[2], two.clone()).unwrap().len(), 2);
        assert_eq!(encoded_images(&[2, 1], two.clone()).unwrap().len(), 2);
        assert_eq!(
            encoded_images(&[3], two.clone()).unwrap_err().to_string(),
            "input 'image': shape [3] holds 3 elements but 2 were sent"
        );
        assert!(encoded_images(&[], two.clone()).is_err());
        assert!(encoded_images(&[-1], two.clone()).is_err());
        assert!(element_count(&[i64::MAX, i64::MAX]).is_err());
    }

    #[test]
    fn pixel_tensors_split_into_images() {
        let data = Bytes::from(vec![0u8; 2 * 3 * 4 * 3]);
        assert_eq!(pixel_images(&[2, 3, 4, 3], data.clone()).unwrap().len(), 2);
        assert_eq!(pixel_images(&[6, 12], data.clone()).unwrap().len(), 1);
        assert_eq!(pixel_images(&[6, 4, 3], data.clone()).unwrap().len(), 1);
        let err = pixel_images(&[2, 3, 4, 2], Bytes::from(vec![0u8; 48])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "input 'image'[0]: raw pixels: 2 channels; expected 1 (gray), 3 (RGB) or 4 (RGBA)"
        );
        assert!(pixel_images(&[72], data.clone()).is_err());
        assert!(pixel_images(&[2, 3, 4, 4], data).is_err());
    }

    #[test]
    fn outputs_encode_raw_little_endian() {
        let mut results = vec![
            OcrResult {
                text: Some("héllo".into()),
                confidence: Some(0.875),
                ..Default::default()
            },
            OcrResult {
                text: Some(String::new()),
                confidence: Some(0.0),
                ..Default::default()
            },
        ];
        let text = OutputTensor::take(OutputKind::Text, &mut results);
        assert_eq!(text.to_raw(), b"\x06\0\0\0h\xc3\xa9llo\0\0\0\0");
        let conf = OutputTensor::take(OutputKind::Confidence, &mut results);
        assert_eq!(conf.to_raw(), [0, 0, 0x60, 0x3f, 0, 0, 0, 0]);
    }
}
