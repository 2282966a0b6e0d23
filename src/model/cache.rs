//! The result cache (`--cache-bytes`, off by default): the same image bytes with the same
//! options and outputs get the stored result without running Tesseract. Keys are SHA-256
//! digests of everything that decides the result; entries are evicted least recently used
//! first once their total size passes the budget.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    sync::{Mutex, PoisonError},
};

use lru::LruCache;
use metrics::{counter, gauge};
use sha2::{Digest, Sha256};

use crate::{
    ocr::{ImageInput, OcrOptions, OcrResult, OutputSet},
    telemetry::metrics::{CACHE_BYTES, CACHE_LOOKUPS},
};

/// What decides a result: the image, the options and the outputs asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key([u8; 32]);

impl Key {
    pub fn new(image: &ImageInput, options: &OcrOptions, outputs: OutputSet) -> Key {
        let mut settings = DefaultHasher::new();
        options.hash(&mut settings);
        outputs.hash(&mut settings);
        let mut digest = Sha256::new();
        digest.update(settings.finish().to_le_bytes());
        match image {
            ImageInput::Encoded(file) => {
                digest.update(b"file");
                digest.update(file);
            }
            ImageInput::Raw(raw) => {
                let (data, width, height, channels) = raw.parts();
                digest.update(b"raw");
                for dimension in [width, height, u32::from(channels)] {
                    digest.update(dimension.to_le_bytes());
                }
                digest.update(data);
            }
        }
        Key(digest.finalize().into())
    }
}

pub struct ResultCache {
    budget: usize,
    state: Mutex<State>,
}

struct State {
    entries: LruCache<Key, (OcrResult, usize)>,
    bytes: usize,
}

impl ResultCache {
    pub fn new(budget: usize) -> ResultCache {
        ResultCache {
            budget,
            state: Mutex::new(State {
                entries: LruCache::unbounded(),
                bytes: 0,
            }),
        }
    }

    pub fn get(&self, key: &Key) -> Option<OcrResult> {
        let found = self
            .lock()
            .entries
            .get(key)
            .map(|(result, _)| result.clone());
        let outcome = if found.is_some() { "hit" } else { "miss" };
        counter!(CACHE_LOOKUPS, "outcome" => outcome).increment(1);
        found
    }

    pub fn insert(&self, key: Key, result: &OcrResult) {
        let size = size_of(result);
        if size > self.budget {
            return;
        }
        let mut state = self.lock();
        if let Some((_, replaced)) = state.entries.put(key, (result.clone(), size)) {
            state.bytes -= replaced;
        }
        state.bytes += size;
        while state.bytes > self.budget {
            match state.entries.pop_lru() {
                Some((_, (_, evicted))) => state.bytes -= evicted,
                None => break,
            }
        }
        gauge!(CACHE_BYTES).set(state.bytes as f64);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Roughly what an entry holds in memory: its strings and words, and the entry itself.
fn size_of(result: &OcrResult) -> usize {
    let text = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    let words = result.words.as_ref().map_or(0, |words| {
        words
            .iter()
            .map(|w| w.text.len() + std::mem::size_of_val(w))
            .sum()
    });
    text(&result.text) + text(&result.hocr) + text(&result.tsv) + words + 128
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ocr::{Languages, OutputKind};
    use bytes::Bytes;

    fn result(text: &str) -> OcrResult {
        OcrResult {
            text: Some(text.to_owned()),
            ..Default::default()
        }
    }

    #[test]
    fn keys_cover_image_options_and_outputs() {
        let tessdata = std::env::temp_dir().join(format!("tesserve-cache-{}", std::process::id()));
        std::fs::create_dir_all(&tessdata).unwrap();
        std::fs::write(tessdata.join("eng.traineddata"), b"").unwrap();
        let lang = Languages::scan(&tessdata).unwrap().parse("eng").unwrap();
        let options = OcrOptions::new(lang);
        let text: OutputSet = [OutputKind::Text].into_iter().collect();
        let image = ImageInput::Encoded(Bytes::from_static(b"png bytes"));
        let key = Key::new(&image, &options, text);
        assert_eq!(key, Key::new(&image, &options, text));
        let other = ImageInput::Encoded(Bytes::from_static(b"png bytez"));
        assert_ne!(key, Key::new(&other, &options, text));
        assert_ne!(key, Key::new(&image, &options, OutputSet::all()));
        let mut sparse = options.clone();
        sparse.psm = crate::ocr::Psm::new(11).unwrap();
        assert_ne!(key, Key::new(&image, &sparse, text));
    }

    #[test]
    fn evicts_least_recently_used_past_the_budget() {
        let cache = ResultCache::new(3 * (128 + 10));
        let key = |n: u8| Key([n; 32]);
        for n in 0..3 {
            cache.insert(key(n), &result("0123456789"));
        }
        assert!(cache.get(&key(0)).is_some(), "touch 0: 1 is now the oldest");
        cache.insert(key(3), &result("0123456789"));
        assert!(cache.get(&key(1)).is_none());
        for n in [0, 2, 3] {
            assert_eq!(cache.get(&key(n)), Some(result("0123456789")));
        }
        cache.insert(key(9), &result(&"x".repeat(10_000)));
        assert!(cache.get(&key(9)).is_none(), "larger than the whole budget");
    }
}
