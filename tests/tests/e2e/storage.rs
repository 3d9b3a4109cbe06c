//! `storage.min_free_bytes`: below it, uploads get 507 in the client's protocol and nothing is
//! stored (DESIGN.md §1.10); reads keep working.

use wharf_tests::serve::Served;
use wharf_tests::{http_client, random_bytes, sha256_digest};

#[test]
fn uploads_get_507_when_free_space_is_below_the_minimum() {
    wharf_tests::init_logging();
    // More free space than any disk has: every upload must be refused.
    let mut server = Served::start(&[], |port| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\nauto_create_repos = true\n\n\
             [storage]\nmin_free_bytes = 1152921504606846976\n"
        )
    });
    let base = format!("http://127.0.0.1:{}", server.port());
    let client = http_client();
    server.wait_until(|| {
        client
            .get(format!("{base}/readyz"))
            .send()
            .is_ok_and(|r| r.status() == 200)
    });

    eprintln!("--- OCI: a new upload session → 507 with an OCI error body");
    let r = client
        .post(format!("{base}/v2/full/img/blobs/uploads/"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 507);
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(
        body["errors"][0]["detail"]["wharf_code"], "INSUFFICIENT_STORAGE",
        "{body}"
    );

    eprintln!("--- OCI monolithic upload → 507, and the blob is not there");
    let data = random_bytes(1000);
    let digest = sha256_digest(&data);
    let r = client
        .post(format!("{base}/v2/full/img/blobs/uploads/?digest={digest}"))
        .body(data.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 507);
    let r = client
        .head(format!("{base}/v2/full/img/blobs/{digest}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);

    eprintln!("--- generic PUT → 507");
    let r = client
        .put(format!("{base}/generic/files/a.txt"))
        .body(data)
        .send()
        .unwrap();
    assert_eq!(r.status(), 507);
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["errors"][0]["code"], "INSUFFICIENT_STORAGE", "{body}");

    eprintln!("--- reads still work");
    assert_eq!(
        client.get(format!("{base}/v2/")).send().unwrap().status(),
        200
    );
}
