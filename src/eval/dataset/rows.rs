//! Reading one array's rows in order, a batch at a time, from a stored member (seeking) or a
//! deflated one (inflating), with the member's CRC checked once all of it was read.

use super::npy::{Array, ArrayData, Fault};
use super::{Dataset, Error, Member, fault};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};

/// Largest buffer reserved ahead of the bytes actually arriving (a read grows past it only as
/// data is really there).
const RESERVE_AHEAD: usize = 8 << 20;

pub(super) enum Src<'a> {
    /// The file, seeked to each read.
    Stored(File),
    /// The member's inflating reader, past the `.npy` header.
    Deflated(Box<zip::read::ZipFile<'a, BufReader<File>>>),
}

/// Reads one array's rows in order, a batch at a time: memory is one batch.
pub struct Rows<'a> {
    pub(super) ds: &'a Dataset,
    pub(super) member: &'a Member,
    pub(super) src: Src<'a>,
    /// Data bytes consumed.
    pub(super) pos: usize,
    /// Rows consumed.
    pub(super) row: usize,
    /// CRC-32 of a stored member's bytes so far, while they were all read in order.
    pub(super) crc: Option<Crc32>,
}

impl Rows<'_> {
    pub fn member(&self) -> &Member {
        self.member
    }

    /// Rows not read yet.
    pub fn remaining(&self) -> usize {
        self.member
            .header
            .samples()
            .unwrap_or(0)
            .saturating_sub(self.row)
    }

    fn samples(&self) -> Result<usize, Error> {
        self.member.header.samples().ok_or_else(|| {
            self.ds.bad(
                &self.member.name,
                format!(
                    "is a scalar ({}); it needs a first axis of samples",
                    self.member.header.describe()
                ),
            )
        })
    }

    /// Byte range of `count` rows from the current position, checked against the shape.
    fn span(&self, count: usize) -> Result<usize, Error> {
        let n = self.samples()?;
        let row = self.member.header.row_bytes();
        let done = self.row;
        if done.checked_add(count).is_none_or(|end| end > n) {
            return Err(self.ds.bad(
                &self.member.name,
                format!(
                    "has {n} samples; rows {done}..{} were asked for",
                    done.saturating_add(count)
                ),
            ));
        }
        // count rows fit in the data, whose size fits in usize.
        Ok(count.saturating_mul(row))
    }

    /// The next `count` rows.
    pub fn read(&mut self, count: usize) -> Result<Array, Error> {
        let len = self.span(count)?;
        let h = &self.member.header;
        let mut shape = h.shape.clone();
        shape[0] = count;
        let bytes = self.bytes(len)?;
        self.row += count;
        Ok(Array {
            shape,
            data: ArrayData::decode(h.dtype, bytes),
        })
    }

    /// Skips `count` rows.
    pub fn skip(&mut self, count: usize) -> Result<(), Error> {
        let len = self.span(count)?;
        let (ds, m) = (self.ds, self.member);
        match &mut self.src {
            Src::Deflated(r) => {
                let got = io::copy(&mut r.as_mut().take(len as u64), &mut io::sink())
                    .map_err(|e| fault(Fault::Io(e), &ds.display, &m.name))?;
                self.short(got, len as u64)?;
            }
            Src::Stored(_) if len > 0 => self.crc = None,
            Src::Stored(_) => {}
        }
        self.pos += len;
        self.row += count;
        Ok(())
    }

    /// Exactly `len` bytes at the current position; a buffer grows only as bytes arrive.
    pub(super) fn bytes(&mut self, len: usize) -> Result<Vec<u8>, Error> {
        let (ds, m) = (self.ds, self.member);
        let mut buf = Vec::with_capacity(len.min(RESERVE_AHEAD));
        let got = match &mut self.src {
            Src::Stored(f) => {
                let at = m.data_offset.saturating_add(self.pos as u64);
                match f.seek(SeekFrom::Start(at)) {
                    Ok(_) => f.take(len as u64).read_to_end(&mut buf),
                    Err(e) => Err(e),
                }
            }
            Src::Deflated(r) => r.as_mut().take(len as u64).read_to_end(&mut buf),
        }
        .map_err(|e| fault(Fault::Io(e), &ds.display, &m.name))?;
        self.short(got as u64, len as u64)?;
        if let (Src::Stored(_), Some(crc)) = (&self.src, &mut self.crc) {
            crc.update(&buf);
        }
        self.pos += len;
        Ok(buf)
    }

    fn short(&self, got: u64, want: u64) -> Result<(), Error> {
        if got < want {
            return Err(self.ds.bad(
                &self.member.name,
                format!(
                    "data truncated: the member ends {} bytes into its data; the .npy header declares {} ({})",
                    self.pos as u64 + got,
                    self.member.header.data_bytes,
                    self.member.header.describe()
                ),
            ));
        }
        Ok(())
    }

    /// After the last row: a member read to its end must match its CRC, and a deflated one
    /// must end exactly where its header says (reading stops one byte past the declared
    /// size, whatever the member would inflate to). A member not read to its end (a limit)
    /// is not checked.
    pub fn finish(self) -> Result<(), Error> {
        if self.pos != self.member.header.data_bytes {
            return Ok(());
        }
        if let Some(crc) = &self.crc
            && matches!(self.src, Src::Stored(_))
            && crc.value() != self.member.crc32
        {
            return Err(self.ds.bad(
                &self.member.name,
                format!(
                    "corrupt member data: CRC-32 {:08x}, the zip directory says {:08x}",
                    crc.value(),
                    self.member.crc32
                ),
            ));
        }
        if let Src::Deflated(mut r) = self.src {
            let mut probe = [0u8; 1];
            let n = loop {
                match r.read(&mut probe) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            }
            .map_err(|e| fault(Fault::Io(e), &self.ds.display, &self.member.name))?;
            if n != 0 {
                return Err(self.ds.bad(
                    &self.member.name,
                    format!(
                        "the member inflates to more than the {} bytes its .npy header declares ({})",
                        self.member.header.total_bytes(),
                        self.member.header.describe()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// CRC-32 (IEEE, as zip uses), a byte at a time.
#[derive(Debug, Clone)]
pub(super) struct Crc32(u32);

const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        // i < 256 (the loop bound): the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

impl Crc32 {
    pub(super) fn new() -> Self {
        Self(!0)
    }

    pub(super) fn update(&mut self, bytes: &[u8]) {
        let mut c = self.0;
        for &b in bytes {
            c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
        self.0 = c;
    }

    pub(super) fn value(&self) -> u32 {
        !self.0
    }
}
