//! A model's compared outputs, sample after sample: in memory while small, then in an unnamed
//! scratch file, so that what an evaluation holds does not grow with the dataset (a text
//! recognizer's `[T, classes]` output is about 1 MB a sample). Readers walk the samples in
//! blocks of at most [`BLOCK_BYTES`].

use std::borrow::Cow;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

/// Values kept in memory before they go to the scratch file (per model's outputs), unless the
/// evaluation says otherwise ([`Spill::above_bytes`]).
pub const SPILL_ABOVE_BYTES: usize = 64 << 20;
/// Most bytes a reader holds at once (at least one sample).
pub const BLOCK_BYTES: usize = 4 << 20;

/// Where values go once they pass `above_bytes`.
#[derive(Debug, Clone)]
pub struct Spill {
    pub dir: PathBuf,
    pub above_bytes: usize,
}

/// The values: the first `spilled` floats in `file` (little-endian f32), the rest in `tail`.
#[derive(Debug, Clone, Default)]
pub struct Values {
    tail: Vec<f32>,
    file: Option<Arc<File>>,
    spilled: usize,
}

impl From<Vec<f32>> for Values {
    fn from(tail: Vec<f32>) -> Self {
        Values {
            tail,
            file: None,
            spilled: 0,
        }
    }
}

impl Values {
    pub fn len(&self) -> usize {
        self.spilled + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether some values are in the scratch file.
    pub fn spilled(&self) -> bool {
        self.spilled > 0
    }

    /// The in-memory tail, where new values are appended.
    pub fn tail_mut(&mut self) -> &mut Vec<f32> {
        &mut self.tail
    }

    /// All the values, read back from the scratch file where they are there.
    pub fn into_vec(self) -> io::Result<Vec<f32>> {
        if self.spilled == 0 {
            return Ok(self.tail);
        }
        Ok(self.read(0, self.len())?.into_owned())
    }

    /// The in-memory tail.
    pub fn tail(&self) -> &[f32] {
        &self.tail
    }

    /// Moves the tail to the scratch file when it holds more than `spill.above_bytes`.
    pub fn maybe_spill(&mut self, spill: Option<&Spill>) -> io::Result<()> {
        let Some(s) = spill else { return Ok(()) };
        if self.tail.len() * 4 <= s.above_bytes {
            return Ok(());
        }
        let file = match &self.file {
            Some(f) => f.clone(),
            None => {
                let f = Arc::new(tempfile::tempfile_in(&s.dir)?);
                self.file = Some(f.clone());
                f
            }
        };
        let bytes: Vec<u8> = self.tail.iter().flat_map(|v| v.to_le_bytes()).collect();
        file.write_all_at(&bytes, self.spilled as u64 * 4)?;
        self.spilled += self.tail.len();
        self.tail = Vec::new();
        Ok(())
    }

    /// Values `[from, from + len)`, borrowed when they are in memory.
    pub fn read(&self, from: usize, len: usize) -> io::Result<Cow<'_, [f32]>> {
        let end = from + len;
        if end > self.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("values {from}..{end} asked of {}", self.len()),
            ));
        }
        if from >= self.spilled {
            return Ok(Cow::Borrowed(
                &self.tail[from - self.spilled..end - self.spilled],
            ));
        }
        let in_file = end.min(self.spilled) - from;
        let mut bytes = vec![0u8; in_file * 4];
        if let Some(f) = &self.file {
            f.read_exact_at(&mut bytes, from as u64 * 4)?;
        }
        let mut v: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if end > self.spilled {
            v.extend_from_slice(&self.tail[..end - self.spilled]);
        }
        Ok(Cow::Owned(v))
    }

    /// `f(i, sample)` for each of the first `samples` samples of `per` values, in blocks.
    pub fn each_row(
        &self,
        per: usize,
        samples: usize,
        mut f: impl FnMut(usize, &[f32]),
    ) -> io::Result<()> {
        if per == 0 {
            (0..samples).for_each(|k| f(k, &[]));
            return Ok(());
        }
        let rows = block_rows(per);
        let mut i = 0;
        while i < samples {
            let n = rows.min(samples - i);
            let block = self.read(i * per, n * per)?;
            for (k, s) in block.chunks_exact(per).enumerate() {
                f(i + k, s);
            }
            i += n;
        }
        Ok(())
    }

    /// `f(i, a_i, b_i)` for the first `samples` samples of `per` values of both, in blocks.
    pub fn zip_rows(
        a: &Values,
        b: &Values,
        per: usize,
        samples: usize,
        mut f: impl FnMut(usize, &[f32], &[f32]),
    ) -> io::Result<()> {
        let rows = block_rows(per);
        let mut i = 0;
        while i < samples {
            let n = rows.min(samples - i);
            let (x, y) = (a.read(i * per, n * per)?, b.read(i * per, n * per)?);
            for k in 0..n {
                let r = k * per..(k + 1) * per;
                f(i + k, &x[r.clone()], &y[r]);
            }
            i += n;
        }
        Ok(())
    }

    /// `f` of each of the first `samples` samples, collected.
    pub fn map_rows<T>(
        &self,
        per: usize,
        samples: usize,
        mut f: impl FnMut(&[f32]) -> T,
    ) -> io::Result<Vec<T>> {
        let mut out = Vec::with_capacity(samples);
        self.each_row(per, samples, |_, s| out.push(f(s)))?;
        Ok(out)
    }
}

/// Samples per block: as many as fit [`BLOCK_BYTES`], at least one.
fn block_rows(per: usize) -> usize {
    (BLOCK_BYTES / (per.max(1) * 4)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spill(dir: &std::path::Path) -> Spill {
        Spill {
            dir: dir.to_path_buf(),
            above_bytes: 8,
        }
    }

    #[test]
    fn spilled_values_read_back_as_they_were_written() {
        let dir = tempfile::tempdir().unwrap();
        let s = spill(dir.path());
        let mut v = Values::default();
        let all: Vec<f32> = (0..30).map(|i| i as f32 * 0.5 - 3.0).collect();
        for batch in all.chunks(7) {
            v.tail_mut().extend_from_slice(batch);
            v.maybe_spill(Some(&s)).unwrap();
        }
        assert!(v.spilled() && v.len() == 30, "{v:?}");
        assert_eq!(&*v.read(0, 30).unwrap(), &all[..]);
        assert_eq!(&*v.read(12, 11).unwrap(), &all[12..23]);
        let rows = v.map_rows(3, 10, |r| r.to_vec()).unwrap();
        assert_eq!(rows.concat(), all);
        let mem = Values::from(all.clone());
        let mut seen = 0;
        Values::zip_rows(&v, &mem, 5, 6, |i, a, b| {
            assert_eq!(a, b);
            assert_eq!(a, &all[i * 5..(i + 1) * 5]);
            seen += 1;
        })
        .unwrap();
        assert_eq!(seen, 6);
        assert!(v.read(25, 6).is_err());
    }

    #[test]
    fn small_values_stay_in_memory_and_empty_samples_are_still_counted() {
        let mut v = Values::from(vec![1.0, 2.0]);
        v.maybe_spill(None).unwrap();
        assert!(!v.spilled());
        let mut n = 0;
        Values::default()
            .each_row(0, 4, |_, s| {
                assert!(s.is_empty());
                n += 1
            })
            .unwrap();
        assert_eq!(n, 4);
    }
}
