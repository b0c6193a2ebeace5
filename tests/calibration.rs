//! Streamed calibration statistics against a direct computation over the same values.

mod support;

use kompress::api::CalibrationMethod;
use kompress::eval::calibrate::{BINS, ENTROPY_LEVELS, TensorStats};
use std::path::{Path, PathBuf};
use support::lcg;

/// Batches whose range grows (so the histogram widens several times), with a few outliers
/// and a skew (more mass above 0), like post-activation tensors.
fn batches() -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    for (b, scale) in [0.01f32, 0.5, 0.3, 2.0, 1.0, 7.5, 3.0].iter().enumerate() {
        let v: Vec<f32> = lcg(3000, 7 + b as u64)
            .iter()
            .zip(lcg(3000, 70 + b as u64))
            .map(|(a, c)| {
                // roughly bell-shaped: the sum of two uniforms, shifted up
                (a + c) * 0.5 * scale + 0.2 * scale
            })
            .collect();
        out.push(v);
    }
    out[3][17] = 40.0; // outliers
    out[5][3] = -25.0;
    out
}

fn streamed(batches: &[Vec<f32>]) -> TensorStats {
    let mut s = TensorStats::default();
    for b in batches {
        s.update(b);
    }
    s
}

/// The histogram computed in one go over `[-range, range]`.
fn direct_histogram(values: &[f32], range: f64) -> Vec<u64> {
    let mut h = vec![0u64; BINS];
    for &v in values {
        let i = ((f64::from(v) + range) * (BINS as f64 / (2.0 * range))) as usize;
        h[i.min(BINS - 1)] += 1;
    }
    h
}

#[test]
fn min_and_max_are_exact_and_the_histogram_matches_a_direct_one() {
    let b = batches();
    let all: Vec<f32> = b.concat();
    let s = streamed(&b);
    let min = all.iter().copied().fold(f32::INFINITY, f32::min);
    let max = all.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    assert_eq!((s.min, s.max), (min, max));
    assert_eq!(s.count, all.len() as u64);
    assert_eq!(
        s.range_for(CalibrationMethod::MinMax, 99.9, false),
        (min, max)
    );
    let (h, range) = s.histogram();
    assert!((40.0..80.0).contains(&range), "range {range}");
    let d = direct_histogram(&all, range);
    let moved: u64 = h.iter().zip(&d).map(|(a, b)| a.abs_diff(*b)).sum();
    // Merging bins by powers of two equals binning at the final range, up to values that
    // sit on a bin edge within float rounding.
    assert!(
        moved <= 4,
        "{moved} counts differ from the direct histogram"
    );
}

#[test]
fn percentiles_are_within_one_bin_of_the_sorted_values() {
    let b = batches();
    let all: Vec<f32> = b.concat();
    let s = streamed(&b);
    let (_, range) = s.histogram();
    let w = 2.0 * range / BINS as f64;
    let n = all.len();
    for p in [99.0, 99.9, 99.99] {
        // symmetric: percentile of |x|
        let mut abs: Vec<f64> = all.iter().map(|v| f64::from(v.abs())).collect();
        abs.sort_by(f64::total_cmp);
        let k = ((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1;
        let want = abs[k];
        let (lo, hi) = s.range_for(CalibrationMethod::Percentile, p, true);
        let t = f64::from(hi);
        assert!(
            t >= want - 1e-6 && t <= want + w + 1e-6,
            "p{p}: |x| threshold {t}, sorted says {want} (bin {w})"
        );
        assert!(f64::from(lo) <= 0.0);
        // asymmetric: each tail cut by (100 - p) / 2 percent
        let mut v: Vec<f64> = all.iter().map(|v| f64::from(*v)).collect();
        v.sort_by(f64::total_cmp);
        let cut = (100.0 - p) / 200.0;
        let lo_want = v[((cut * n as f64).ceil() as usize).clamp(1, n) - 1];
        let hi_want = v[(((1.0 - cut) * n as f64).ceil() as usize).clamp(1, n) - 1];
        let (lo, hi) = s.range_for(CalibrationMethod::Percentile, p, false);
        assert!(
            (f64::from(lo) - lo_want).abs() <= w + 1e-6,
            "p{p}: low {lo}, sorted says {lo_want}"
        );
        assert!(
            (f64::from(hi) - hi_want).abs() <= w + 1e-6,
            "p{p}: high {hi}, sorted says {hi_want}"
        );
    }
}

/// TensorRT's entropy calibration, written out plainly over the |x| histogram.
fn reference_entropy(abs: &[u64], range: f64, levels: usize) -> f64 {
    let n = abs.len();
    let mut best_i = n;
    let mut best_kl = f64::INFINITY;
    for i in levels..=n {
        let mut p: Vec<f64> = abs[..i].iter().map(|&c| c as f64).collect();
        p[i - 1] += abs[i..].iter().sum::<u64>() as f64;
        let mut q = vec![0f64; i];
        for l in 0..levels {
            let start = l * i / levels;
            let end = (l + 1) * i / levels;
            let mass: f64 = abs[start..end].iter().map(|&c| c as f64).sum();
            let nz = abs[start..end].iter().filter(|&&c| c > 0).count() as f64;
            for j in start..end {
                if abs[j] > 0 {
                    q[j] = mass / nz;
                }
            }
        }
        let ps: f64 = p.iter().sum();
        let qs: f64 = q.iter().sum();
        let mut kl = 0.0;
        for j in 0..i {
            if p[j] > 0.0 {
                let a = p[j] / ps;
                let b = (q[j] / qs).max(1e-10);
                kl += a * (a / b).ln();
            }
        }
        if kl < best_kl {
            best_kl = kl;
            best_i = i;
        }
    }
    best_i as f64 * range / n as f64
}

#[test]
fn entropy_threshold_matches_a_plain_reference_and_clips_outliers() {
    let b = batches();
    let s = streamed(&b);
    let (h, range) = s.histogram();
    // the |x| histogram, folded by hand from the signed one
    let half = BINS / 2;
    let abs: Vec<u64> = (0..half).map(|k| h[half + k] + h[half - 1 - k]).collect();
    assert_eq!(abs, s.abs_histogram());
    let want = reference_entropy(&abs, range, ENTROPY_LEVELS);
    let (lo, hi) = s.range_for(CalibrationMethod::Entropy, 0.0, true);
    assert!(
        (f64::from(hi) - want).abs() < 1e-4 * want,
        "entropy threshold {hi}, reference {want}"
    );
    let lo_want = -want.min(f64::from(-s.min)); // clipped at -t, or at the minimum
    assert!(
        (f64::from(lo) - lo_want).abs() < 1e-4 * want,
        "{lo} vs {lo_want}"
    );
    // the two outliers (40, -25) are far outside the bulk: the clip must leave them out
    assert!(hi < 20.0, "entropy kept the outliers: {hi}");
    assert!(f64::from(hi) > 5.0, "entropy clipped the bulk: {hi}");
}

#[test]
fn statistics_stay_the_same_size_however_many_values_arrive() {
    let mut s = TensorStats::default();
    for i in 0..200 {
        s.update(
            &lcg(1000, i)
                .iter()
                .map(|v| v * (i as f32 + 1.0))
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(s.histogram().0.len(), BINS);
    assert_eq!(s.count, 200_000);
}

/// input [N, 8, side, side] -> three 3x3 Convs of 32 channels (with Relus): at side 32 about
/// 0.7 MB of calibrated activations per sample, so keeping them would show at once.
fn wide_conv_model(side: i64) -> kompress::onnx::pb::ModelProto {
    use kompress::onnx::{f32_tensor, node, pb};
    let pads = pb::AttributeProto {
        name: Some("pads".into()),
        ints: vec![1, 1, 1, 1],
        r#type: Some(pb::attribute_proto::AttributeType::Ints as i32),
        ..Default::default()
    };
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let mut x = "input".to_string();
    for (i, cin) in [8usize, 32, 32].into_iter().enumerate() {
        let w: Vec<f32> = lcg(32 * cin * 9, i as u64)
            .iter()
            .map(|v| v * (2.0 / (cin * 9) as f32).sqrt())
            .collect();
        inits.push(f32_tensor(&format!("K{i}"), &[32, cin as i64, 3, 3], &w));
        nodes.push(node(
            "Conv",
            format!("conv{i}"),
            vec![x.clone(), format!("K{i}")],
            vec![format!("c{i}")],
            vec![pads.clone()],
        ));
        let out = if i == 2 {
            "y".to_string()
        } else {
            format!("h{i}")
        };
        nodes.push(node(
            "Relu",
            format!("relu{i}"),
            vec![format!("c{i}")],
            vec![out.clone()],
            vec![],
        ));
        x = out;
    }
    support::model_of(
        9,
        17,
        pb::GraphProto {
            name: Some("wide".into()),
            node: nodes,
            initializer: inits,
            input: vec![support::value_info(
                "input",
                &[None, Some(8), Some(side), Some(side)],
            )],
            output: vec![support::value_info(
                "y",
                &[None, Some(32), Some(side), Some(side)],
            )],
            ..Default::default()
        },
    )
}

/// A folder with [`wide_conv_model`] (`model.onnx`) and `n` generated samples for it
/// (`calib.npz`); the tests that use it measure peak RSS, so GNU time must be there.
fn wide_conv_setup(n: usize, seed: u64) -> (tempfile::TempDir, PathBuf, PathBuf) {
    wide_conv_setup_sized(n, seed, 32)
}

fn wide_conv_setup_sized(
    n: usize,
    seed: u64,
    side: usize,
) -> (tempfile::TempDir, PathBuf, PathBuf) {
    assert!(
        support::gnu_time().is_some(),
        "this test measures peak RSS with /usr/bin/time (GNU time): install it"
    );
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    support::write_model(&wide_conv_model(side as i64), &model);
    let data = dir.path().join("calib.npz");
    let per = 8 * side * side;
    support::write_npz(
        &data,
        &[(
            "input",
            support::f32_array(&[n, 8, side, side], &lcg(n * per, seed)),
        )],
    );
    (dir, model, data)
}

/// `kompress compress` calibrated on `data`, its peak RSS measured: it must succeed.
fn compress_measured(model: &Path, out: &Path, job: &str, data: &Path) -> support::Finished {
    let f = support::run_bounded(
        &support::compress_args(model, out, job, Some(data)),
        &[],
        std::time::Duration::from_secs(300),
        true,
    );
    assert_eq!(f.status(), 0, "{}", f.describe());
    f
}

/// A job with one static pass over the Convs of [`wide_conv_model`], written in `dir`
/// (`evaluation.batchSize` 128, which calibration must not follow).
fn conv_calibration_job(
    dir: &Path,
    model: &Path,
    data: &Path,
    method: &str,
    samples: usize,
    batch: Option<usize>,
) -> String {
    let batch_line = batch.map_or(String::new(), |b| format!("          batchSize: {b}\n"));
    support::write_job(
        dir,
        &format!(
            "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata:\n  name: mem\nspec:\n  model:\n    uri: {}\n  dataset:\n    uri: {}\n  passes:\n    - quantize:\n        mode: static\n        ops: [Conv]\n        calibration:\n          method: {method}\n          samples: {samples}\n{batch_line}  output:\n    uri: {}\n  evaluation:\n    batchSize: 128\n    threads: 1\n",
            model.display(),
            data.display(),
            dir.join("out").display()
        ),
    )
}

#[test]
fn calibration_memory_stays_flat_at_eight_times_the_samples() {
    let n = 512;
    let (dir, model, data) = wide_conv_setup(n, 5);
    let peak_kb = |samples: usize| {
        let job = conv_calibration_job(dir.path(), &model, &data, "entropy", samples, None);
        let out = dir.path().join(format!("q{samples}.onnx"));
        let f = compress_measured(&model, &out, &job, &data);
        assert!(
            f.stderr
                .contains(&format!("calibration: {samples} samples")),
            "{}",
            f.stderr
        );
        f.max_rss_kb.expect("GNU time reports peak RSS")
    };
    let small = peak_kb(64);
    let large = peak_kb(512);
    eprintln!("peak RSS: 64 samples {small} kB, 512 samples {large} kB");
    // Keeping the activations would add ~0.7 MB a sample (~300 MB more at 512).
    assert!(
        (large as f64) <= 1.3 * small as f64 + 16_384.0,
        "peak RSS grew with the samples: {small} kB at 64, {large} kB at 512"
    );
}

/// Calibration runs `calibration.batchSize` rows at a time (default up to 8), whatever
/// `evaluation.batchSize` is: each run holds every calibrated activation of its batch, so
/// that batch, not the evaluation's, sets calibration's peak memory.
#[test]
fn calibration_memory_follows_its_own_batch_not_the_evaluation_batch() {
    let n = 128;
    let (dir, model, data) = wide_conv_setup(n, 6);
    let peak_kb = |batch: Option<usize>| {
        let job = conv_calibration_job(dir.path(), &model, &data, "minMax", n, batch);
        let out = dir.path().join("q.onnx");
        let f = compress_measured(&model, &out, &job, &data);
        let want = batch.map_or("batch up to 8 within 256 MiB".to_string(), |b| {
            format!("batch {b}")
        });
        assert!(f.stderr.contains(&want), "{want}: {}", f.stderr);
        f.max_rss_kb.expect("GNU time reports peak RSS")
    };
    let default = peak_kb(None);
    let large = peak_kb(Some(128));
    eprintln!(
        "peak RSS, evaluation.batchSize 128: calibration batch 8 {default} kB, 128 {large} kB"
    );
    // A batch of 128 holds ~0.7 MB of activations a sample (~90 MB); 8 holds ~6 MB.
    assert!(
        large >= default + 40_000,
        "calibration batch 8 peaked at {default} kB, 128 at {large} kB: the batch does not bound memory"
    );
}

#[test]
fn entropy_on_one_sided_values_compares_against_all_256_asymmetric_levels() {
    // Relu-like: |x| of the batches, so every value is >= 0
    let b: Vec<Vec<f32>> = batches()
        .into_iter()
        .map(|v| v.into_iter().map(f32::abs).collect())
        .collect();
    let s = streamed(&b);
    let (_, range) = s.histogram();
    let abs = s.abs_histogram();
    let (_, hi) = s.range_for(CalibrationMethod::Entropy, 0.0, false);
    let want = reference_entropy(&abs, range, 2 * ENTROPY_LEVELS);
    assert!(
        (f64::from(hi) - want).abs() < 1e-4 * want,
        "asymmetric one-sided: {hi}, reference with 256 levels {want}"
    );
    // symmetric ranges spend half the levels on negatives: 128 levels for |x|
    let (_, hi128) = s.range_for(CalibrationMethod::Entropy, 0.0, true);
    let want128 = reference_entropy(&abs, range, ENTROPY_LEVELS);
    assert!(
        (f64::from(hi128) - want128).abs() < 1e-4 * want128,
        "{hi128} vs {want128}"
    );
    assert!(hi > hi128, "more levels, less clipping: {hi} vs {hi128}");
}

/// With `batchSize` unset, a sample whose calibrated activations are large runs in fewer
/// samples at once (as many as fit 256 MiB, measured on the first): less memory than a fixed
/// batch of 8, the same ranges (minMax), so the same model bytes.
#[test]
fn an_unset_calibration_batch_shrinks_to_fit_large_activations() {
    // 320 x 320: about 40 MiB of calibrated activations a sample, so 6 a run, not 8.
    let n = 12;
    let (dir, model, data) = wide_conv_setup_sized(n, 7, 320);
    let run = |batch: Option<usize>| {
        let job = conv_calibration_job(dir.path(), &model, &data, "minMax", n, batch);
        let out = dir.path().join(format!("q{}.onnx", batch.unwrap_or(0)));
        let f = compress_measured(&model, &out, &job, &data);
        (f, std::fs::read(&out).unwrap())
    };
    let (auto, auto_bytes) = run(None);
    let (fixed, fixed_bytes) = run(Some(8));
    let line = auto
        .stderr
        .lines()
        .find(|l| l.contains("MiB of activations a row, so "))
        .unwrap_or_else(|| panic!("no chosen batch in: {}", auto.stderr));
    // "calibration: 40.6 MiB of activations a row, so 6 rows a run"
    let word_after = |key: &str| line.split(key).nth(1).and_then(|r| r.split(' ').next());
    let mib: f64 = word_after("calibration: ").unwrap().parse().unwrap();
    let rows: usize = word_after("so ").unwrap().parse().unwrap();
    assert!(
        (30.0..60.0).contains(&mib) && (1..8).contains(&rows) && rows as f64 * mib <= 256.0,
        "{line}"
    );
    assert_eq!(
        auto_bytes, fixed_bytes,
        "minMax ranges do not depend on the batch"
    );
    let (a, f8) = (auto.max_rss_kb.unwrap(), fixed.max_rss_kb.unwrap());
    eprintln!("{line}; peak RSS auto {a} kB, batch 8 {f8} kB");
    // Two samples fewer a run: ~80 MiB less held at once.
    assert!(
        a + 40_000 <= f8,
        "peak RSS with the batch unset {a} kB, batch 8 {f8} kB"
    );
}
