//! `.npy`/`.npz` arrays and datasets the tests write.

use super::*;

/// One array for an npz: (.npy descr, shape, little-endian bytes).
pub struct Npy {
    pub descr: &'static str,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

pub fn f32_array(shape: &[usize], v: &[f32]) -> Npy {
    Npy {
        descr: "<f4",
        shape: shape.to_vec(),
        bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

pub fn i64_array(v: &[i64]) -> Npy {
    Npy {
        descr: "<i8",
        shape: vec![v.len()],
        bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

fn npy_bytes(a: &Npy) -> Vec<u8> {
    let dims: Vec<String> = a.shape.iter().map(|d| d.to_string()).collect();
    let shape = if a.shape.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut h = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
        a.descr
    );
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((h.len() as u16).to_le_bytes());
    out.extend(h.as_bytes());
    out.extend(&a.bytes);
    out
}

/// An int64 array of any shape.
pub fn i64_shaped(shape: &[usize], v: &[i64]) -> Npy {
    assert_eq!(shape.iter().product::<usize>(), v.len());
    Npy {
        shape: shape.to_vec(),
        ..i64_array(v)
    }
}

/// A copy of the npz at `src` with `arrays` added (its own members kept as they are).
pub fn npz_with(src: &Path, dst: &Path, arrays: &[(&str, Npy)]) {
    std::fs::copy(src, dst).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dst)
        .unwrap();
    add_members(zip::ZipWriter::new_append(f).unwrap(), arrays);
}

pub fn write_npz(path: &Path, arrays: &[(&str, Npy)]) {
    add_members(
        zip::ZipWriter::new(std::fs::File::create(path).unwrap()),
        arrays,
    );
}

/// Stores `arrays` as `<name>.npy` members and finishes the archive.
fn add_members(mut z: zip::ZipWriter<std::fs::File>, arrays: &[(&str, Npy)]) {
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, a) in arrays {
        z.start_file(format!("{name}.npy"), opts).unwrap();
        z.write_all(&npy_bytes(a)).unwrap();
    }
    z.finish().unwrap();
}

/// A dataset for `mlp(widths)`: inputs and labels = the fp32 model's own argmax would need
/// ORT; labels here are arbitrary but fixed, so accuracy is just a number both models share.
pub fn mlp_dataset(path: &Path, n: usize, din: usize, classes: usize) {
    let x = lcg(n * din, 42);
    let labels: Vec<i64> = (0..n).map(|i| (i % classes) as i64).collect();
    write_npz(
        path,
        &[
            ("input", f32_array(&[n, din], &x)),
            ("labels", i64_array(&labels)),
        ],
    );
}

/// Token ids [n, seq] for `embedding(v, ..)`, every id in range, including 0 and v - 1.
pub fn embedding_dataset(path: &Path, n: usize, seq: usize, v: usize) -> Vec<i64> {
    let ids: Vec<i64> = (0..n * seq)
        .map(|i| ((i * 7919 + i / seq) % v) as i64)
        .collect();
    write_npz(
        path,
        &[(
            "ids",
            Npy {
                descr: "<i8",
                shape: vec![n, seq],
                bytes: ids.iter().flat_map(|x| x.to_le_bytes()).collect(),
            },
        )],
    );
    ids
}
