// swift-tools-version: 6.1
// Benchmarks for saliencyd, kept out of the root package so that `swift build` / `swift test`
// of the daemon never pay for them. Depends on the root package by path and uses only its
// statistics products (EVTOnline, SaliencyCore): the daemon targets are never built here.
//
// Run: ../Benchmarks/run.sh   (or `swift package benchmark` in this directory)
import PackageDescription

let package = Package(
    name: "saliencyd-benchmarks",
    platforms: [.macOS(.v14)],
    dependencies: [
        .package(name: "saliencyd", path: ".."),
        // The trait list REPLACES the defaults (whose RuntimeInterposer is not mirrored here).
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        // Synthetic data shared by every benchmark: the same lognormal family as `saliencyctl bench`.
        .target(
            name: "BenchSupport",
            dependencies: [.product(name: "SaliencyCore", package: "saliencyd")],
            path: "BenchSupport"
        ),
        // package-benchmark suite (wallClock, throughput, mallocCountTotal).
        .executableTarget(
            name: "FilterBankBench",
            dependencies: [
                "BenchSupport",
                .product(name: "EVTOnline", package: "saliencyd"),
                .product(name: "SaliencyCore", package: "saliencyd"),
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "FilterBankBench",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        // Plain (non-async) profiler / .npy driver: where does update's time go? Also holds a
        // prototype COPY of FilterBank for measuring layout changes (never shipped).
        .executableTarget(
            name: "BankProfile",
            dependencies: [
                "BenchSupport",
                .product(name: "EVTOnline", package: "saliencyd"),
                .product(name: "SaliencyCore", package: "saliencyd"),
            ],
            path: "BankProfile"
        ),
    ]
)
