//! Any bytes as a protobuf ModelInferRequest, through the same decoding and validation the
//! gRPC service and the REST transcoder use: errors are fine, panics are not.
#![no_main]

use std::sync::{Arc, OnceLock};

use clap::Parser;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tesserve::{
    config::Cli,
    model::{Admission, Model},
    ocr::EnginePool,
    oip::{codec, pb},
};

fn model() -> &'static Arc<Model> {
    static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
    MODEL.get_or_init(|| {
        let cli = Cli::try_parse_from(["tesserve", "--workers", "1"]).expect("flags");
        let config = cli.serve.validate().expect("tessdata with eng installed");
        let pool = EnginePool::start(config.pool).expect("engine pool");
        Model::new("ocr".into(), pool, Admission::default(), None)
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = pb::ModelInferRequest::decode(data) {
        let _ = codec::decode(model(), request, None);
    }
});
