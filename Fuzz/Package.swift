// swift-tools-version: 6.1
// libFuzzer targets for saliencyd's decoders of hostile input (docs/fuzzing.md), kept out of the
// root package like Benchmarks/: depends on the root package by path. One executable per target;
// each defines LLVMFuzzerTestOneInput and nothing else (no main: libFuzzer brings it).
//
// Build and run with ./run.sh, which passes `--sanitize fuzzer --sanitize address` (and
// -parse-as-library) to the whole build so that the library code under test is instrumented for
// coverage, not just these small harnesses. A plain `swift build` of this package is not useful.
import PackageDescription

/// One fuzz target on the given products of the root package.
func fuzzTarget(_ name: String, _ products: [String]) -> Target {
    .executableTarget(name: name, dependencies: products.map { .product(name: $0, package: "saliencyd") }, path: "Sources/\(name)")
}

let package = Package(
    name: "saliencyd-fuzz",
    platforms: [.macOS(.v14)],
    dependencies: [
        .package(name: "saliencyd", path: ".."),
    ],
    targets: [
        fuzzTarget("FuzzSchema", ["SaliencyCore", "SaliencyStream"]),
        fuzzTarget("FuzzQuery", ["SaliencyCore", "SaliencyStream"]),
        fuzzTarget("FuzzConfig", ["SaliencyCore", "SaliencyMonitor"]),
        fuzzTarget("FuzzAlertLog", ["SaliencyCore", "SaliencyMonitor"]),
        fuzzTarget("FuzzSnapshot", ["SaliencyCore", "SaliencyMonitor"]),
    ],
    swiftLanguageModes: [.v6]
)
