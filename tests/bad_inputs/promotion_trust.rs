use super::*;

#[test]
fn bytes_already_at_the_promoted_address_are_verified_or_replaced() {
    // The digest an identical run promotes.
    let first = Case::new();
    let (_, out) = first.run_json(&first.digits().yaml());
    let digest = out["result"]["promoted"]["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let good = std::fs::read(
        first
            .production()
            .join(format!("sha256-{digest}/model.onnx")),
    )
    .unwrap();
    let n = good.len();
    let mut flipped = good.clone();
    flipped[n / 2] ^= 0x01;
    let planted: Vec<(&str, Vec<u8>)> = vec![
        ("zeros of the same size", vec![0u8; n]),
        ("random bytes of the same size", {
            let v = lcg(n.div_ceil(4), 77);
            v.iter().flat_map(|x| x.to_le_bytes()).take(n).collect()
        }),
        ("one bit flipped", flipped),
        ("one byte short", good[..n - 1].to_vec()),
        ("100 bytes too long", {
            let mut v = good.clone();
            v.extend([0u8; 100]);
            v
        }),
        ("empty", Vec::new()),
    ];
    let mut checks = Cases::new();
    for (what, bytes) in planted {
        checks.case(what, || {
            let case = Case::new();
            let at = case
                .production()
                .join(format!("sha256-{digest}/model.onnx"));
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            std::fs::write(&at, &bytes).unwrap();
            let (_, out) = case.run_json(&case.digits().yaml());
            assert_eq!(
                out["result"]["promoted"]["sha256"],
                digest.as_str(),
                "{what}"
            );
            assert_eq!(
                sha256_hex(&at),
                digest,
                "{what}: the planted bytes were kept"
            );
            let manifest: Value = serde_json::from_slice(
                &std::fs::read(case.production().join("promoted.json")).unwrap(),
            )
            .unwrap();
            assert_eq!(manifest["digest"], digest.as_str(), "{what}");
            assert_eq!(
                PathBuf::from(manifest["uri"].as_str().unwrap()),
                at,
                "{what}: {manifest}"
            );
            check_promote_dir(&case.production()).unwrap_or_else(|e| panic!("{what}: {e}"));
        });
    }
    checks.finish();
}
