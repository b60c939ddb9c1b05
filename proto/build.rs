//! Generates the Rust code for `minerwatch.v1` from the `.proto` files, with protox as the
//! compiler: no system `protoc` needed.
fn main() -> anyhow::Result<()> {
    let files = [
        "minerwatch/v1/events.proto",
        "minerwatch/v1/sensor.proto",
        "minerwatch/v1/collector.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed=proto/{f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .btree_map(".")
        .compile_fds(fds)?;
    Ok(())
}
