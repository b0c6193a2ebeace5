use super::*;

#[test]
fn one_client_per_store_url_shared_by_clones() {
    let s = Storage::new(None)
        .with_option("aws_access_key_id", "k")
        .with_option("aws_secret_access_key", "s");
    let a = Location::parse("s3://bucket/a/model.onnx").unwrap();
    let b = Location::parse("s3://bucket/b/report.json").unwrap();
    let other = Location::parse("s3://other/x").unwrap();
    let first = s.store(&a).unwrap().store;
    assert!(Arc::ptr_eq(&first, &s.store(&b).unwrap().store));
    assert!(Arc::ptr_eq(&first, &s.clone().store(&a).unwrap().store));
    assert!(!Arc::ptr_eq(&first, &s.store(&other).unwrap().store));
    // A changed configuration gets fresh clients.
    let t = s.clone().with_retries(0, Duration::from_secs(1));
    assert!(!Arc::ptr_eq(&first, &t.store(&a).unwrap().store));
}

#[test]
fn plain_http_endpoints_need_allow_http() {
    let spec = StorageSpec {
        endpoint: Some("http://user:pw@minio.storage:9000/".into()),
        ..Default::default()
    };
    let loc = Location::parse("s3://b/k").unwrap();
    let s = Storage::new(Some(&spec)).with_option("aws_allow_http", "false");
    let e = s.store(&loc).err().expect("refused");
    let text = e.to_string();
    assert!(e.is_permanent(), "{text}");
    assert!(
        text.contains("spec.storage.allowHttp") && text.contains("http://minio.storage:9000"),
        "{text}"
    );
    assert!(!text.contains("pw"), "no user info in messages: {text}");
    let allowed = StorageSpec {
        allow_http: Some(true),
        ..spec
    };
    assert!(Storage::new(Some(&allowed)).store(&loc).is_ok());
}
