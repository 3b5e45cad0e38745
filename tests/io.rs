//! Tests of `tapegrad::io`: safetensors round trips (bit-exact), hand-built files in the
//! layout PyTorch writes, and the errors for corrupt files and dtype mismatches.

use std::path::PathBuf;
use tapegrad::{Error, Tensor, io};

/// A path under the system temp dir, removed on drop.
struct TempPath(PathBuf);

impl TempPath {
    fn new(tag: &str) -> Self {
        TempPath(std::env::temp_dir().join(format!(
            "tapegrad-test-io-{tag}-{}.safetensors",
            std::process::id()
        )))
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Builds a safetensors file by hand: 8-byte little-endian header length, JSON header
/// (padded with spaces to a multiple of 8), data.
fn raw_file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut h = header.as_bytes().to_vec();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend_from_slice(data);
    out
}

fn special_f32() -> Vec<f32> {
    vec![
        0.0,
        -0.0,
        1.0,
        -1.5,
        f32::MIN_POSITIVE,
        f32::from_bits(1),           // smallest subnormal
        f32::from_bits(0x0040_0000), // a larger subnormal
        -f32::from_bits(0x0000_1234),
        f32::MAX,
        f32::MIN,
        f32::EPSILON,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::from_bits(0x7fc0_1234), // quiet NaN with payload
        f32::from_bits(0x7f80_0001), // signalling NaN
        f32::from_bits(0xffc0_0000), // negative NaN
        std::f32::consts::PI,
    ]
}

fn special_f64() -> Vec<f64> {
    vec![
        0.0,
        -0.0,
        1.0,
        -1.5,
        f64::MIN_POSITIVE,
        f64::from_bits(1),
        f64::from_bits(0x0008_0000_0000_0000),
        -f64::from_bits(0x1234),
        f64::MAX,
        f64::MIN,
        f64::EPSILON,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        f64::from_bits(0x7ff8_0000_0000_1234),
        f64::from_bits(0x7ff0_0000_0000_0001),
        f64::from_bits(0xfff8_0000_0000_0000),
        std::f64::consts::E,
    ]
}

#[test]
fn f32_round_trip_is_bit_identical() {
    let v = special_f32();
    let n = v.len();
    let a = Tensor::from_vec(v.clone(), [n]).unwrap();
    let b = Tensor::from_vec(v.iter().rev().copied().collect(), [3, n / 3]).unwrap();
    let c = Tensor::from_vec((0..24).map(|i| i as f32 * 0.1).collect(), [2, 1, 3, 4]).unwrap();
    let s = Tensor::scalar(-0.0f32);
    let e = Tensor::<f32>::zeros([0, 5]);
    let named = [
        ("conv.weight", &c),
        ("a", &a),
        ("b", &b),
        ("scalar", &s),
        ("empty", &e),
    ];
    let path = TempPath::new("f32");
    io::save_safetensors(&path.0, &named).unwrap();
    for loaded in [
        io::load_safetensors::<f32>(&path.0).unwrap(),
        io::from_safetensors_bytes::<f32>(&io::to_safetensors_bytes(&named).unwrap()).unwrap(),
    ] {
        let names: Vec<&str> = loaded.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["a", "b", "conv.weight", "empty", "scalar"],
            "sorted by name"
        );
        for (name, t) in &loaded {
            let orig = named.iter().find(|(n, _)| n == name).unwrap().1;
            assert_eq!(t.shape(), orig.shape(), "{name}");
            let bits = |t: &Tensor<f32>| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(t), bits(orig), "{name}");
        }
    }
    // File and in-memory bytes are identical.
    assert_eq!(
        std::fs::read(&path.0).unwrap(),
        io::to_safetensors_bytes(&named).unwrap()
    );
}

#[test]
fn f64_round_trip_is_bit_identical() {
    let v = special_f64();
    let n = v.len();
    let a = Tensor::from_vec(v, [2, n / 2]).unwrap();
    let s = Tensor::scalar(f64::from_bits(0x7ff0_0000_0000_0001));
    let named = [("x", &a), ("s", &s)];
    let path = TempPath::new("f64");
    io::save_safetensors(&path.0, &named).unwrap();
    let loaded = io::load_safetensors::<f64>(&path.0).unwrap();
    assert_eq!(loaded.len(), 2);
    assert_eq!(loaded[0].0, "s");
    assert_eq!(loaded[0].1.rank(), 0);
    assert_eq!(loaded[0].1.data()[0].to_bits(), 0x7ff0_0000_0000_0001);
    assert_eq!(loaded[1].0, "x");
    assert_eq!(&loaded[1].1.shape()[..], &[2, n / 2]);
    let bits: Vec<u64> = loaded[1].1.data().iter().map(|v| v.to_bits()).collect();
    let want: Vec<u64> = a.data().iter().map(|v| v.to_bits()).collect();
    assert_eq!(bits, want);
}

#[test]
fn header_and_data_layout_are_standard() {
    let t = Tensor::from_vec(vec![1.0f32, -2.0], [1, 2]).unwrap();
    let bytes = io::to_safetensors_bytes(&[("w", &t)]).unwrap();
    let want = raw_file(
        r#"{"w":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]}}"#,
        &[1.0f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat(),
    );
    assert_eq!(bytes, want);
}

#[test]
fn reads_files_laid_out_like_pytorch_writes_them() {
    // __metadata__ present, keys not in offset order, "b" stored before "a".
    let data = [
        2.5f32.to_le_bytes(),
        1.0f32.to_le_bytes(),
        2.0f32.to_le_bytes(),
    ]
    .concat();
    let file = raw_file(
        r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},"b":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}"#,
        &data,
    );
    let loaded = io::from_safetensors_bytes::<f32>(&file).unwrap();
    assert_eq!(loaded.len(), 2);
    assert_eq!(
        (loaded[0].0.as_str(), loaded[0].1.data()),
        ("a", &[1.0f32, 2.0][..])
    );
    assert_eq!(
        (loaded[1].0.as_str(), loaded[1].1.data()),
        ("b", &[2.5f32][..])
    );
    assert_eq!(loaded[1].1.rank(), 0);
}

#[test]
fn saving_overwrites_and_leaves_no_temporary_file() {
    let path = TempPath::new("overwrite");
    let one = Tensor::<f32>::ones([3]);
    io::save_safetensors(&path.0, &[("old", &one)]).unwrap();
    io::save_safetensors(&path.0, &[("new", &one)]).unwrap();
    let loaded = io::load_safetensors::<f32>(&path.0).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].0, "new");
    let dir = path.0.parent().unwrap();
    let stem = path.0.file_name().unwrap().to_string_lossy().to_string();
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(&stem) && n != &stem)
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn corrupt_or_truncated_files_are_errors() {
    let t = Tensor::<f32>::arange(10).reshape([2, 5]);
    let good = io::to_safetensors_bytes(&[("t", &t)]).unwrap();
    let mut bad_json = good.clone();
    bad_json[9] = b'#';
    let mut huge_header = good.clone();
    huge_header[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let wrong_offsets = raw_file(
        r#"{"t":{"dtype":"F32","shape":[2,5],"data_offsets":[0,36]}}"#,
        &[0; 36],
    );
    let table: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "header too small"),
        ("short", good[..5].to_vec(), "header too small"),
        ("header cut", good[..20].to_vec(), "invalid header length"),
        (
            "data cut",
            good[..good.len() - 1].to_vec(),
            "incomplete metadata",
        ),
        (
            "data extra",
            [good.clone(), vec![0]].concat(),
            "incomplete metadata",
        ),
        ("bad json", bad_json, "invalid JSON in header"),
        ("huge header", huge_header, "header too large"),
        (
            "offsets vs shape",
            wrong_offsets,
            "invalid shape, data type, or offset",
        ),
    ];
    for (case, bytes, want) in table {
        let err = io::from_safetensors_bytes::<f32>(&bytes).expect_err(case);
        assert!(matches!(err, Error::Data(_)), "{case}: {err:?}");
        let msg = err.to_string();
        assert!(
            msg.starts_with("safetensors: not a valid file: "),
            "{case}: {msg}"
        );
        assert!(
            msg.contains(want),
            "{case}: `{msg}` should contain `{want}`"
        );
    }

    // Through a file: the path is in the message.
    let path = TempPath::new("truncated");
    std::fs::write(&path.0, &good[..good.len() - 3]).unwrap();
    let err = io::load_safetensors::<f32>(&path.0).unwrap_err();
    assert!(matches!(err, Error::Data(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "{}: safetensors: not a valid file",
            path.0.display()
        )),
        "{msg}"
    );
}

#[test]
fn dtype_mismatch_names_the_tensor() {
    let path = TempPath::new("dtype");
    let w = Tensor::<f32>::ones([2, 2]);
    io::save_safetensors(&path.0, &[("layer1.weight", &w)]).unwrap();
    match io::load_safetensors::<f64>(&path.0).unwrap_err() {
        Error::Parameter { name, message } => {
            assert_eq!(name, "layer1.weight");
            assert!(
                message.starts_with("stored as F32, but f64 (F64) was requested"),
                "{message}"
            );
            assert!(
                message.contains("load the file as f32 and convert with Tensor::cast"),
                "{message}"
            );
            assert!(
                message.ends_with(&format!("(in {})", path.0.display())),
                "{message}"
            );
        }
        other => panic!("expected Error::Parameter, got {other:?}"),
    }
    // f64 → f32 likewise.
    let bytes = io::to_safetensors_bytes(&[("b", &Tensor::<f64>::zeros([1]))]).unwrap();
    let err = io::from_safetensors_bytes::<f32>(&bytes).unwrap_err();
    assert_eq!(
        err.to_string(),
        "parameter `b`: stored as F64, but f32 (F32) was requested; load the file as f64 and convert with Tensor::cast"
    );
}

#[test]
fn integer_and_half_dtypes_are_never_converted() {
    for (dtype, size) in [
        ("I32", 4),
        ("I64", 8),
        ("U8", 1),
        ("F16", 2),
        ("BF16", 2),
        ("BOOL", 1),
    ] {
        let header = format!(
            r#"{{"ok":{{"dtype":"F32","shape":[1],"data_offsets":[0,4]}},"steps":{{"dtype":"{dtype}","shape":[2],"data_offsets":[4,{}]}}}}"#,
            4 + 2 * size
        );
        let file = raw_file(&header, &vec![0u8; 4 + 2 * size]);
        let err = io::from_safetensors_bytes::<f32>(&file).unwrap_err();
        match &err {
            Error::Parameter { name, message } => {
                assert_eq!(name, "steps", "{dtype}");
                assert_eq!(
                    message,
                    &format!("stored as {dtype}, but f32 (F32) was requested")
                );
            }
            other => panic!("{dtype}: expected Error::Parameter, got {other:?}"),
        }
        assert!(io::from_safetensors_bytes::<f64>(&file).is_err());
    }
}

#[test]
fn duplicate_and_reserved_names_are_rejected_when_saving() {
    let t = Tensor::<f32>::zeros([1]);
    let err = io::to_safetensors_bytes(&[("w", &t), ("b", &t), ("w", &t)]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "parameter `w`: appears more than once in the list of tensors to save"
    );
    let err = io::to_safetensors_bytes(&[("__metadata__", &t)]).unwrap_err();
    assert!(
        matches!(err, Error::Parameter { ref name, .. } if name == "__metadata__"),
        "{err:?}"
    );
    // Nothing is written on error.
    let path = TempPath::new("dup");
    assert!(io::save_safetensors(&path.0, &[("w", &t), ("w", &t)]).is_err());
    assert!(!path.0.exists());
}

#[test]
fn io_errors_carry_the_path() {
    let missing = std::env::temp_dir()
        .join("tapegrad-test-io-no-such-dir")
        .join("m.safetensors");
    match io::load_safetensors::<f32>(&missing).unwrap_err() {
        Error::Io { path, source } => {
            assert_eq!(path, missing.display().to_string());
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Error::Io, got {other:?}"),
    }
    let err = io::save_safetensors(&missing, &[("w", &Tensor::<f32>::zeros([1]))]).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(
        err.to_string().contains("tapegrad-test-io-no-such-dir"),
        "{err}"
    );
}

#[test]
fn an_empty_list_round_trips() {
    let bytes = io::to_safetensors_bytes::<f64>(&[]).unwrap();
    assert!(
        io::from_safetensors_bytes::<f64>(&bytes)
            .unwrap()
            .is_empty()
    );
}
