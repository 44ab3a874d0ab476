// swift-tools-version: 6.1
// saliencyd: streaming extreme-value parameter saliency for deployed CNNs.
//
// Layering (enforced by the dependency lists below; lowest first):
//   SaliencyCore  <- EVTOnline            (statistics: no sockets, no files)
//   SaliencyCore  <- SaliencyStream       (ZeroMQ + wire codecs: no statistics)
//   all of them   <- SaliencyMonitor      (the daemon)
//   executables:     saliencyd, saliencyctl
// Module names never equal type names and never clash with Foundation
// (Foundation has a class `Stream`), hence the `Saliency` prefixes.
import PackageDescription

let package = Package(
    name: "saliencyd",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "saliencyd", targets: ["saliencyd"]),
        .executable(name: "saliencyctl", targets: ["saliencyctl"]),
        .library(name: "EVTOnline", targets: ["EVTOnline"]),
        .library(name: "SaliencyCore", targets: ["SaliencyCore"]),
        .library(name: "SaliencyStream", targets: ["SaliencyStream"]),
        .library(name: "SaliencyMonitor", targets: ["SaliencyMonitor"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-numerics", from: "1.1.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        // MARK: - Public API
        .target(
            name: "SaliencyCore",
            path: "Sources/Core"
        ),
        // The FilterBank's vector kernels (SSE2 and AVX2, chosen at run time; Sources/CKernels).
        .target(
            name: "CKernels",
            path: "Sources/CKernels"
        ),
        .target(
            name: "EVTOnline",
            dependencies: [
                "SaliencyCore", "CKernels",
                .product(name: "RealModule", package: "swift-numerics"),
            ],
            path: "Sources/EVTOnline"
        ),
        .target(
            name: "SaliencyStream",
            dependencies: ["SaliencyCore", "CZeroMQ", "CKernels"],
            path: "Sources/Stream"
        ),
        .target(
            name: "SaliencyMonitor",
            dependencies: [
                "SaliencyCore", "EVTOnline", "SaliencyStream",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            path: "Sources/Monitor"
        ),
        .executableTarget(
            name: "saliencyd",
            dependencies: [
                "SaliencyMonitor",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/saliencyd"
        ),
        .executableTarget(
            name: "saliencyctl",
            dependencies: [
                "SaliencyCore", "EVTOnline", "SaliencyStream", "SaliencyMonitor", "CKernels",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/saliencyctl"
        ),

        // MARK: - Implementation details
        .systemLibrary(
            name: "CZeroMQ",
            path: "Sources/CZeroMQ",
            pkgConfig: "libzmq",
            providers: [.apt(["libzmq3-dev"])]
        ),

        // MARK: - Tests
        .testTarget(name: "CoreTests", dependencies: ["SaliencyCore"], path: "Tests/CoreTests"),
        .testTarget(
            name: "EVTOnlineTests",
            dependencies: ["EVTOnline", "SaliencyCore", "CKernels"],
            path: "Tests/EVTOnlineTests",
            resources: [.copy("Fixtures")]
        ),
        .testTarget(
            name: "StreamTests",
            dependencies: ["SaliencyStream", "SaliencyCore", "CZeroMQ"],
            path: "Tests/StreamTests",
            exclude: ["Fixtures"]
        ),
        .testTarget(
            name: "MonitorTests",
            dependencies: ["SaliencyMonitor", "SaliencyStream", "EVTOnline", "SaliencyCore"],
            path: "Tests/MonitorTests"
        ),
        .testTarget(
            name: "EndToEndTests",
            dependencies: ["SaliencyStream", "SaliencyCore"],
            path: "Tests/EndToEndTests"
        ),
    ],
    swiftLanguageModes: [.v6]
)
