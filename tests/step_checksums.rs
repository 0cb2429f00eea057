//! Step checksums are stored in users' databases (drift detection compares them on every run),
//! and they are `sha256(serde_json::to_string(step))`: the serialization of a step must never
//! change, whatever the Rust types behind it. These values were computed before the step kinds
//! moved to `src/ops/` and their names became types; a change here breaks every deployment in
//! flight with "the step changed since it ran".

use sha2::{Digest, Sha256};

/// `sha256(serde_json::to_string(step))`, the definition the stored checksums were computed
/// from (computed here, not through `plan::checksum`, so this pins the serialization itself).
fn serialized_sha256(step: &phased::plan::Step) -> String {
    let json = serde_json::to_string(step).unwrap_or_default();
    Sha256::digest(json.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn checksums(file: &str) -> Vec<(String, String)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let loaded = match phased::plan::load(&path) {
        Ok(loaded) => loaded,
        Err(report) => panic!("{}", report.render_plain()),
    };
    loaded
        .plan
        .step_refs()
        .into_iter()
        .map(|(s, def)| (s.id(), serialized_sha256(def)))
        .collect()
}

fn pinned(values: &[(&str, &str)]) -> Vec<(String, String)> {
    values
        .iter()
        .map(|(id, sum)| (id.to_string(), sum.to_string()))
        .collect()
}

#[test]
fn quickstart_step_checksums_are_unchanged() {
    let expected = pinned(&[
        (
            "setup#1",
            "c9b236e595b9ee5f8b76f40bfe34f25c0fd3dff28d916fb8b55e89a4306c6fd4",
        ),
        (
            "setup#2",
            "66a2d5907c87cb549dc5417427bdb90beb1468f259b4c78ef6a44cf56a6859dc",
        ),
        (
            "expand#1",
            "c82edaf6a45b751adcda6464bb338b9a3d85678334f58ae54a13e6e84625439b",
        ),
        (
            "expand#2",
            "ee32abe4599053246e3b930047d0942a474c184c438b833f2d264fad8ed7a51c",
        ),
        (
            "expand#3",
            "d6b1e6d6ed7931f640752f738a0b558c59ebb407b2928e0e3e7d937294f2bc7d",
        ),
        (
            "backfill#1",
            "8455807f6c44a5bd278956ce5afdf97ea84851fe9d30f997b08e28e05286e26a",
        ),
        (
            "switch#1",
            "236e63e6dccc8340fe842e592c3627f4816b3a4756d47f4ab4702f7dd5fe2815",
        ),
        (
            "contract#1",
            "60c802aeccdeaf51acf53dfabca58abf813212c2797ba4b4d04d8f859bd2f60e",
        ),
        (
            "contract#2",
            "083fb21eae5535e1728e3dbdf60e64086cd3bd0e456b27a7a1639758bf07c707",
        ),
    ]);
    assert_eq!(checksums("plans/quickstart.yaml"), expected);
}

#[test]
fn migrations_step_checksums_are_unchanged() {
    let expected = pinned(&[
        (
            "schema#1",
            "8ab6f0a5adb65f7cffec32e6b3e77758950c496116c47a3d2cd808f3a3015b64",
        ),
        (
            "data#1",
            "20e9262c94a3fa237928a144dafa1988242326522c5442217430f2876a02dcd8",
        ),
        (
            "switch#1",
            "798eeeb4cc45c7c20a133a53e99214cf93c057f8c1fca9b91de0dbafbe5d8c89",
        ),
    ]);
    assert_eq!(checksums("plans/migrations.yaml"), expected);
}

/// Every step kind with every field, schema-qualified names included (the catalog operations
/// of issue 14 were pinned when they were added, as expand#11–18 and contract#7–8).
#[test]
fn every_step_kind_checksum_is_unchanged() {
    let expected = pinned(&[
        (
            "expand#1",
            "d14dc7a12e44356274d1cfd830517b48bd3698d31413e7a594e8aa85283b3332",
        ),
        (
            "expand#2",
            "9f9bc17daf34dc8aa99aa3b1f269464e38ac3ddb6e03393c7cd57d4d453e3064",
        ),
        (
            "expand#3",
            "d76ecaa75825bcbbf278f852ed6214bf4a92a36c2bbb5aafcc2ae1669289d113",
        ),
        (
            "expand#4",
            "faf7d824d2b622780caa07215c1e4313ce2dec19621951419ea1718afe455cd5",
        ),
        (
            "expand#5",
            "6a5c93c15478f2470812b882f63daf4aa8950628cc98ebf3f6b2fdeb8b9e9551",
        ),
        (
            "expand#6",
            "55a8ba71853e376f11dd69eeb1abbf1707bfeb6099396805b69ffe4179b5722a",
        ),
        (
            "expand#7",
            "1735fb04c2512f45748c23e84490b7aa346d7685f31e9568958202ae7c848357",
        ),
        (
            "expand#8",
            "58b49f1bb06b2863c2fa8ddfc3bd5abd92cdd87edcc5f64a02cd868efc41184b",
        ),
        (
            "expand#9",
            "3fb510f921683211f02819f6740af02403e5f3b73703827f8fb7a15d05f7588c",
        ),
        (
            "expand#10",
            "1d843c2e53458de518092313bc8334820963b9e8af6788e13b8fcba13fb7ee12",
        ),
        (
            "expand#11",
            "7ddb91e926ca2827b706e64132a5189e0e48aae1ec509e9be998c8475fdd32f9",
        ),
        (
            "expand#12",
            "11444396e994d063cadf768c05a251d33aebef0e897630a81b268b3b326bffb2",
        ),
        (
            "expand#13",
            "1556a29df4f296540d421ce6ba07e7337ccae1da1c05b04ad0ea48ac30e3a9d2",
        ),
        (
            "expand#14",
            "6a689e17023882084fda2c16286a27c4054f6e98e69a8922ec6278b915636bdb",
        ),
        (
            "expand#15",
            "40e418f2df3737342497a8b29888f194cfc0f6f0bed39dce3e7574221ede00f4",
        ),
        (
            "expand#16",
            "6072252a80fccbc73ef1835835ffcb402062411351b0a015ab1d7edcd754e121",
        ),
        (
            "expand#17",
            "e7557bf77932f1cfd34ac6ac2db8d8f0ce08eff70700c0b65c5816501da416e6",
        ),
        (
            "expand#18",
            "2b658589bf7049856e96f4cf5c18e11c7eba1dec16881775217753b503ed1095",
        ),
        (
            "migrate#1",
            "51ee6a02bb47e637a371d67c0d2dbe6e6df0ccbcdbbff53b94653db07f57e042",
        ),
        (
            "migrate#2",
            "75ebb97f93c9d83b7675d0549f62238004dbd3fd8a1a47af256a350914102449",
        ),
        (
            "switch#1",
            "236e63e6dccc8340fe842e592c3627f4816b3a4756d47f4ab4702f7dd5fe2815",
        ),
        (
            "switch#2",
            "bb85324794065733aebf2b9ce64683181bc20d54c24d12ab40482ba1ae0e8a48",
        ),
        (
            "contract#1",
            "cb5057698e9933890635a560e2c447b15b033f84a2ff78b26e7c376d54a3288e",
        ),
        (
            "contract#2",
            "4a873a99ce2841a53cbfffc485319b2ec1d841069213c83ef44daece3eae5566",
        ),
        (
            "contract#3",
            "80756d851c2c9f0f7fa4c0229bb262d0e6e3c684783d910cca645221af945747",
        ),
        (
            "contract#4",
            "0bfff23e9ea9c1e44b074ffe249ac39c83025a16ad2d605ba2b34b1fbff2da7c",
        ),
        (
            "contract#5",
            "a449ac81979c9e8c6c321c2b68fbdf43e7e74b6920039d266679f8820a6869bc",
        ),
        (
            "contract#6",
            "bbd7f2a27b62d5ec07feaa571e287b92f3368d7db523a6a9b0d57abd5fff3e00",
        ),
        (
            "contract#7",
            "326ffdd70c32cb10d77b7e19e46956160e9d288bced8b362553238d47f191211",
        ),
        (
            "contract#8",
            "7aad9122be55f3208951c89b618b49424a03689afc739205652dfb9328baa5aa",
        ),
    ]);
    assert_eq!(checksums("tests/fixtures/every_step_kind.yaml"), expected);
}
