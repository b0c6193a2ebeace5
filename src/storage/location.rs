//! Locations as object_store sees them. URI parsing itself is pure and lives in
//! [`crate::uri`] (the API layer validates specs with it); this is the object_store side.

use super::Result;
use crate::uri::{self, Location};
use object_store::path::Path as ObjPath;

impl Location {
    /// The object store path (remote stores): the key as it is, checked.
    pub(super) fn path(&self) -> Result<ObjPath> {
        self.check()?;
        ObjPath::parse(self.key()).map_err(|e| {
            uri::Error::Malformed {
                uri: self.uri.clone(),
                what: e.to_string(),
            }
            .into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_paths_are_the_keys_never_percent_encoded() {
        let web = Location::parse("https://example.com/my%20models/mod%C3%A8le.onnx").unwrap();
        assert_eq!(web.path().unwrap().as_ref(), "my models/modèle.onnx");
        let l = Location::parse("s3://b/my dir/modèle #1.onnx").unwrap();
        assert_eq!(l.path().unwrap().as_ref(), "my dir/modèle #1.onnx");
    }

    #[test]
    fn a_dotdot_joined_later_is_refused_when_used() {
        let j = Location::parse("s3://b/m/model.onnx")
            .unwrap()
            .parent()
            .join("../secret");
        let e = j.path().unwrap_err();
        assert!(e.is_permanent());
        assert!(e.to_string().contains("`..` is not allowed"), "{e}");
    }
}
