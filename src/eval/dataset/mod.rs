//! NumPy `.npz` datasets: one array per model input (first axis = samples), optional labels.
//!
//! The file is untrusted and may be far larger than memory (real evaluation sets are tens of
//! GB), so [`Dataset::open`] reads only the zip directory and each member's `.npy` header, and
//! the data is read later, a batch of rows at a time ([`Rows`]): stored members by seeking to
//! the rows, deflated members (`numpy.savez_compressed`) by inflating the member sequentially.
//! Every size taken from a header is checked before it becomes an allocation or an offset;
//! the zip directory's sizes are never trusted for allocation; a member is never inflated past
//! the size its `.npy` header declares.

// Sizes, offsets, counts and dimensions here come from outside (files, servers): numeric
// casts that could truncate, wrap or lose a sign are checked conversions, or allowed where the
// value is bounded by construction (each allow says why).
#![warn(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

mod npy;
mod rows;

pub use npy::{
    Array, ArrayData, Dtype, Header, MAX_HEADER_BYTES, MAX_RANK, parse_header, parse_npy,
};
use npy::{Fault, read_header};
pub use rows::Rows;
use rows::{Crc32, Src};

/// Deflate cannot inflate more than 1032 bytes per compressed byte; a member that declares
/// more than that of its compressed size (plus slack for tiny members) is lying.
const DEFLATE_MAX_RATIO: u64 = 1032;
const DEFLATE_SLACK: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read dataset {dataset}")]
    Read {
        dataset: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot read dataset {dataset}, array `{array}`")]
    ReadArray {
        dataset: String,
        array: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "dataset {dataset} is not a NumPy .npz archive (a zip of .npy files): save it with numpy.savez"
    )]
    NotNpz {
        dataset: String,
        #[source]
        source: zip::result::ZipError,
    },
    #[error("dataset {dataset}, array `{array}`: {what}")]
    BadArray {
        dataset: String,
        array: String,
        what: String,
    },
    #[error("dataset {dataset}: {what}")]
    Bad { dataset: String, what: String },
}

/// One `.npy` member of the archive: its header and where its data is.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub header: Header,
    /// Index in the zip directory.
    index: usize,
    /// Stored (seekable) rather than deflated.
    stored: bool,
    /// For a stored member: the file offset of its first data byte.
    data_offset: u64,
    /// The zip directory's CRC-32 of the member (header and data).
    crc32: u32,
}

impl Member {
    pub fn dtype(&self) -> Dtype {
        self.header.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.header.shape
    }

    /// Deflated (numpy.savez_compressed) rather than stored (numpy.savez).
    pub fn is_compressed(&self) -> bool {
        !self.stored
    }
}

/// The name an array is shown by in messages (never empty, control characters escaped).
fn shown(name: &str) -> String {
    if name.is_empty() {
        "(empty name)".into()
    } else {
        name.escape_debug().to_string()
    }
}

/// An opened `.npz`: the directory and every member's header, no data.
#[derive(Debug, Clone)]
pub struct Dataset {
    path: PathBuf,
    display: String,
    members: BTreeMap<String, Member>,
}

type Zip = zip::ZipArchive<BufReader<File>>;

/// The zip archive a deflated member is streamed from; one per concurrent [`Rows`] (each
/// holds its archive while it reads). Opened on first use.
#[derive(Default)]
pub struct Archive {
    zip: Option<Zip>,
}

impl Dataset {
    /// Opens `path`, reading only the zip directory and the `.npy` headers. `display` names the
    /// dataset in every message (the URI the user wrote, not a scratch path).
    pub fn open(path: &Path, display: &str) -> Result<Self, Error> {
        let display = if display.is_empty() {
            path.display().to_string()
        } else {
            display.to_string()
        };
        let read = |source| Error::Read {
            dataset: display.clone(),
            source,
        };
        let f = File::open(path).map_err(read)?;
        let file_len = f.metadata().map_err(read)?.len();
        let mut zip = zip::ZipArchive::new(BufReader::new(f)).map_err(|source| Error::NotNpz {
            dataset: display.clone(),
            source,
        })?;
        let mut members = BTreeMap::new();
        for index in 0..zip.len() {
            let m = Self::member(&mut zip, index, file_len, &display)?;
            let Some(m) = m else { continue };
            if members.contains_key(&m.name) {
                return Err(Error::BadArray {
                    dataset: display,
                    array: shown(&m.name),
                    what: "the archive holds two members of this name".into(),
                });
            }
            members.insert(m.name.clone(), m);
        }
        if members.is_empty() {
            return Err(Error::Bad {
                dataset: display,
                what: "the archive holds no .npy arrays".into(),
            });
        }
        Ok(Self {
            path: path.into(),
            display,
            members,
        })
    }

    /// Opens `path`, named by its path in messages.
    pub fn load(path: &Path) -> Result<Self, Error> {
        Self::open(path, &path.display().to_string())
    }

    /// Reads one member's header and checks its sizes; None for a member that is not `.npy`.
    fn member(
        zip: &mut Zip,
        index: usize,
        file_len: u64,
        display: &str,
    ) -> Result<Option<Member>, Error> {
        // Member data lies before the central directory (and within the file).
        let data_end = file_len.min(zip.central_directory_start());
        let raw_name = zip.name_for_index(index).unwrap_or("");
        let Some(name) = raw_name.strip_suffix(".npy").map(str::to_string) else {
            return Ok(None);
        };
        let bad = |what: String| Error::BadArray {
            dataset: display.into(),
            array: shown(&name),
            what,
        };
        if name.is_empty() {
            return Err(bad(
                "a member named `.npy` has no array name: save arrays with names, e.g. numpy.savez(path, input=x)".into(),
            ));
        }
        let mut e = zip
            .by_index(index)
            .map_err(|e| member_error(e, display, &name))?;
        let stored = match e.compression() {
            zip::CompressionMethod::Stored => true,
            zip::CompressionMethod::Deflated => false,
            other => {
                return Err(bad(format!(
                    "compression method {other} is not supported: save with numpy.savez or numpy.savez_compressed"
                )));
            }
        };
        if e.encrypted() {
            return Err(bad("the member is encrypted".into()));
        }
        let (data_start, compressed, size, crc32) =
            (e.data_start(), e.compressed_size(), e.size(), e.crc32());
        let h = read_header(&mut e).map_err(|f| fault(f, display, &name))?;
        drop(e);
        let total = h.total_bytes();
        if size != total {
            return Err(bad(format!(
                "the zip directory says the member holds {size} bytes but its .npy header declares {total} ({} of header, {} of {} data): the archive is damaged",
                h.header_len,
                h.data_bytes,
                h.describe()
            )));
        }
        let end = data_start
            .checked_add(compressed)
            .filter(|&e| e <= data_end);
        if end.is_none() {
            return Err(bad(format!(
                "the zip directory places {compressed} bytes at offset {data_start}, past the end of the member data ({data_end} bytes): the archive is truncated or damaged"
            )));
        }
        if stored && compressed != total {
            return Err(bad(format!(
                "a stored member of {compressed} bytes cannot hold the {total} bytes its .npy header declares: the archive is damaged"
            )));
        }
        if !stored
            && total
                > compressed
                    .saturating_mul(DEFLATE_MAX_RATIO)
                    .saturating_add(DEFLATE_SLACK)
        {
            return Err(bad(format!(
                "{compressed} compressed bytes cannot inflate to the {total} bytes its .npy header declares: the archive is damaged"
            )));
        }
        Ok(Some(Member {
            name,
            index,
            stored,
            // Within the file (checked above), so no overflow.
            data_offset: data_start.saturating_add(h.header_len),
            header: h,
            crc32,
        }))
    }

    /// The file read (scratch).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The name messages use.
    pub fn display_name(&self) -> &str {
        &self.display
    }

    pub fn get(&self, name: &str) -> Option<&Member> {
        self.members.get(name)
    }

    /// Members in name order.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// `name dtype[shape]` of every array, for messages.
    pub fn names(&self) -> String {
        self.members
            .values()
            .map(|m| format!("{} {}", shown(&m.name), m.header.describe()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn find(&self, name: &str) -> Result<&Member, Error> {
        self.members.get(name).ok_or_else(|| Error::BadArray {
            dataset: self.display.clone(),
            array: shown(name),
            what: format!("no such array (arrays: {})", self.names()),
        })
    }

    fn bad(&self, name: &str, what: String) -> Error {
        Error::BadArray {
            dataset: self.display.clone(),
            array: shown(name),
            what,
        }
    }

    /// A sequential reader of `name`'s rows (samples, first axis) from row 0. A deflated
    /// member is inflated from `archive`, which the reader holds while it lives.
    pub fn rows<'a>(&'a self, name: &str, archive: &'a mut Archive) -> Result<Rows<'a>, Error> {
        let m = self.find(name)?;
        let mut crc = Crc32::new();
        let src = if m.stored {
            let mut f = File::open(&self.path).map_err(|source| Error::Read {
                dataset: self.display.clone(),
                source,
            })?;
            // The header's bytes start the member's CRC (checked when the data is read through).
            let mut header = vec![0u8; m.header.header_bytes()];
            f.seek(SeekFrom::Start(m.data_offset - m.header.header_len))
                .and_then(|_| f.read_exact(&mut header))
                .map_err(|e| fault(Fault::Io(e), &self.display, &m.name))?;
            crc.update(&header);
            Src::Stored(f)
        } else {
            let zip = match archive.zip.take() {
                Some(zip) => archive.zip.insert(zip),
                None => {
                    let f = File::open(&self.path).map_err(|source| Error::Read {
                        dataset: self.display.clone(),
                        source,
                    })?;
                    let zip = zip::ZipArchive::new(BufReader::new(f)).map_err(|source| {
                        Error::NotNpz {
                            dataset: self.display.clone(),
                            source,
                        }
                    })?;
                    archive.zip.insert(zip)
                }
            };
            let mut e = zip
                .by_index(m.index)
                .map_err(|e| member_error(e, &self.display, &m.name))?;
            let h = read_header(&mut e).map_err(|f| fault(f, &self.display, &m.name))?;
            if h != m.header {
                return Err(self.bad(
                    &m.name,
                    "the .npy header changed since the dataset was opened".into(),
                ));
            }
            Src::Deflated(Box::new(e))
        };
        Ok(Rows {
            ds: self,
            member: m,
            src,
            pos: 0,
            row: 0,
            crc: Some(crc),
        })
    }

    /// Rows `[start, start + count)` of `name` (seeks in a stored member; inflates a deflated
    /// one from its start). Rows that reach the end are checked as [`Rows::finish`] does.
    pub fn read_rows(&self, name: &str, start: usize, count: usize) -> Result<Array, Error> {
        let mut archive = Archive::default();
        let mut rows = self.rows(name, &mut archive)?;
        rows.skip(start)?;
        let a = rows.read(count)?;
        rows.finish()?;
        Ok(a)
    }

    /// The whole array (a rank-0 array too), checked to be exactly its declared size.
    pub fn read(&self, name: &str) -> Result<Array, Error> {
        let mut archive = Archive::default();
        let mut rows = self.rows(name, &mut archive)?;
        let m = rows.member;
        let h = &m.header;
        let bytes = rows.bytes(h.data_bytes)?;
        let arr = Array {
            shape: h.shape.clone(),
            data: ArrayData::decode(h.dtype, bytes),
        };
        rows.finish()?;
        Ok(arr)
    }
}

/// A member's read failure: corrupt data is the dataset's fault, anything else a read error.
fn fault(f: Fault, dataset: &str, name: &str) -> Error {
    match f {
        Fault::Bad(what) => Error::BadArray {
            dataset: dataset.into(),
            array: shown(name),
            what,
        },
        Fault::Io(e)
            if matches!(
                e.kind(),
                io::ErrorKind::InvalidData
                    | io::ErrorKind::InvalidInput
                    | io::ErrorKind::UnexpectedEof
            ) =>
        {
            Error::BadArray {
                dataset: dataset.into(),
                array: shown(name),
                what: format!("corrupt member data: {e}"),
            }
        }
        Fault::Io(e) => Error::ReadArray {
            dataset: dataset.into(),
            array: shown(name),
            source: e,
        },
    }
}

fn member_error(e: zip::result::ZipError, dataset: &str, name: &str) -> Error {
    match e {
        zip::result::ZipError::Io(e) => fault(Fault::Io(e), dataset, name),
        other => Error::BadArray {
            dataset: dataset.into(),
            array: shown(name),
            what: format!("cannot open the zip member: {other}"),
        },
    }
}

#[cfg(test)]
pub(crate) mod tests;
