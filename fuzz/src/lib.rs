//! Helpers shared by the fuzz targets in `fuzz_targets/`: how an input is cut into
//! chunks, and the scrubber's leak check. Each target documents its input layout.

use std::path::PathBuf;

use loom_supervisor::inputs::MASK;

/// A folder for the files a target needs (`fuzz/target/scratch/<name>`, made if missing):
/// inside the fuzz crate's build folder, out of git and out of the shared `/tmp`.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/scratch").join(name);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("cannot make the scratch folder {}: {e}", dir.display());
    }
    dir
}

/// Chunk lengths for feeding a stream in pieces, drawn from `seed` (a xorshift generator:
/// the same input always splits the same way, so a crash reproduces). Mostly short
/// chunks, so that every boundary position is reached, with an occasional long one.
pub struct Cuts {
    state: u32,
}

impl Cuts {
    /// The cuts for `seed`.
    pub fn new(seed: u8) -> Cuts {
        Cuts { state: 0x9E37_79B9 ^ u32::from(seed).wrapping_mul(0x0101_0101) }
    }

    /// The next chunk length, at least 1.
    pub fn next_len(&mut self) -> usize {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.state = x;
        match x % 8 {
            0 => 1 + (x >> 8) as usize % 512,
            _ => 1 + (x >> 8) as usize % 8,
        }
    }

    /// `data` in consecutive pieces whose lengths come from [`Cuts::next_len`].
    pub fn split<'a>(&mut self, mut data: &'a [u8]) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let (head, rest) = data.split_at(self.next_len().min(data.len()));
            out.push(head);
            data = rest;
        }
        out
    }
}

/// The first secret found in `scrubbed` outside every mask, if any.
///
/// The scrubber replaces each secret with [`MASK`]; a later replacement may overwrite part
/// of an earlier mask (a secret such as `ted]` matches inside `[redacted]`), leaving pieces
/// of masks behind: a prefix of the mask just before a mask, a suffix just after one, any
/// piece between two. A secret that occurs only where it overlaps a mask or such a piece
/// was made by the masking, not taken from the input, so only an occurrence lying wholly
/// outside them counts as a leak. (Input text shaped like such a piece, right next to a
/// mask, is taken for one: that can hide a leak there, but never reports one that is not.)
pub fn leaked<'s>(scrubbed: &str, secrets: &'s [String]) -> Option<&'s str> {
    let masked = masked_bytes(scrubbed.as_bytes());
    let text = scrubbed.as_bytes();
    secrets.iter().map(String::as_str).filter(|s| !s.is_empty()).find(|secret| {
        let s = secret.as_bytes();
        // Every start position: `match_indices` would skip overlapping occurrences.
        (0..=text.len().saturating_sub(s.len()))
            .any(|at| text[at..].starts_with(s) && !masked[at..at + s.len()].iter().any(|m| *m))
    })
}

/// Which bytes of `text` belong to a mask or to a piece of one (see [`leaked`]).
fn masked_bytes(text: &[u8]) -> Vec<bool> {
    let mask = MASK.as_bytes();
    let mut regions: Vec<(usize, usize)> = Vec::new();
    let mut at = 0;
    while let Some(i) = find(&text[at..], mask) {
        regions.push((at + i, at + i + mask.len()));
        at += i + mask.len();
    }
    loop {
        let before = regions.clone();
        for i in 0..regions.len() {
            let floor = if i == 0 { 0 } else { regions[i - 1].1 };
            let ceiling = regions.get(i + 1).map_or(text.len(), |r| r.0);
            let (start, end) = &mut regions[i];
            while let Some(n) =
                (1..mask.len()).rev().find(|&n| *start >= floor + n && mask.starts_with(&text[*start - n..*start]))
            {
                *start -= n;
            }
            while let Some(n) =
                (1..mask.len()).rev().find(|&n| *end + n <= ceiling && mask.ends_with(&text[*end..*end + n]))
            {
                *end += n;
            }
        }
        // Merge regions that touch or whose gap is a piece of the mask.
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(regions.len());
        for (start, end) in regions {
            match merged.last_mut() {
                Some(last) if start == last.1 || find(mask, &text[last.1..start]).is_some() => last.1 = end,
                _ => merged.push((start, end)),
            }
        }
        regions = merged;
        if regions == before {
            break;
        }
    }
    let mut masked = vec![false; text.len()];
    for (start, end) in regions {
        masked[start..end].iter_mut().for_each(|m| *m = true);
    }
    masked
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_cover_the_input_in_order() {
        let data: Vec<u8> = (0..=255).collect();
        for seed in 0..=255 {
            let pieces = Cuts::new(seed).split(&data);
            assert!(pieces.iter().all(|p| !p.is_empty()));
            assert_eq!(pieces.concat(), data);
        }
    }

    #[test]
    fn leak_check_tells_input_from_masking() {
        let secrets = vec!["hunter2".to_owned(), "ted]".to_owned()];
        assert_eq!(leaked("pw=[redacted]", &secrets), None);
        assert_eq!(leaked("pw=hunter2", &secrets), Some("hunter2"));
        // Made by masking: a secret inside a mask, and a piece of a mask left behind.
        assert_eq!(leaked("[redac[redacted]", &secrets), None);
        assert_eq!(leaked("x ted] y", &secrets), Some("ted]"));
        // Pieces: a prefix before a mask, a suffix after one, anything between two.
        assert_eq!(leaked("[r[redacted]ac[redacted]]", &["r[r".to_owned(), "]ac[".to_owned(), "]]".to_owned()]), None);
        let plain = vec!["aaa".to_owned()];
        assert_eq!(leaked("[redacted]aaa", &plain), Some("aaa"), "'a' alone is not a suffix of the mask");
        assert_eq!(leaked("xaaaa", &plain), Some("aaa"), "overlapping occurrences");
    }
}
