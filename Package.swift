// swift-tools-version: 6.0
import PackageDescription

// Release-grade numerics even in debug test builds: the kernels are tight loops.
let fast: [SwiftSetting] = [.unsafeFlags(["-Ounchecked"])]
// The tensor kernels also assume AVX2 + FMA (x86-64-v3, every machine Pivot trains on): without it
// Swift's SIMD8<Float>.addProduct becomes eight calls to fmaf and the BF16 GEMV loses its point.
#if arch(x86_64)
let kernels: [SwiftSetting] = [.unsafeFlags(["-Ounchecked", "-target-cpu", "haswell"])]
#else
let kernels = fast
#endif

let package = Package(
  name: "Pivot",
  platforms: [.macOS(.v14)],
  products: [
    .executable(name: "pivot", targets: ["pivot"]),
    .library(name: "PivotTensor", targets: ["PivotTensor"]),
    .library(name: "PivotNN", targets: ["PivotNN"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    .package(url: "https://github.com/jpsim/Yams", from: "5.0.1"),
    .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
  ],
  targets: [
    .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
    .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
    .systemLibrary(name: "CJPEG", pkgConfig: "libjpeg", providers: [.apt(["libjpeg-dev"])]),
    .target(name: "CJPEGShim", dependencies: ["CJPEG"], cSettings: [.unsafeFlags(["-O2"])]),
    .systemLibrary(name: "CPNG", pkgConfig: "libpng", providers: [.apt(["libpng-dev"])]),
    .target(name: "CPNGShim", dependencies: ["CPNG"], cSettings: [.unsafeFlags(["-O2"])]),
    .systemLibrary(name: "CWebP", pkgConfig: "libwebp", providers: [.apt(["libwebp-dev"])]),
    // AMX tile kernels: C, because Swift has no way to name tile registers.
    .target(name: "CPivotAMX", cSettings: [.unsafeFlags(["-O2"])]),
    .target(name: "PivotTensor", dependencies: ["COpenBLAS", "CPivotAMX"], swiftSettings: kernels),
    .target(name: "PivotText", swiftSettings: fast),
    .target(name: "PivotData", dependencies: ["CZstd", "CJPEG", "CJPEGShim", "CPNG", "CPNGShim", "CWebP"], swiftSettings: fast),
    .target(name: "PivotNN", dependencies: ["PivotTensor"], swiftSettings: kernels),
    .target(name: "PivotModels", dependencies: ["PivotNN"], swiftSettings: fast),
    .target(name: "PivotTrain", dependencies: ["PivotModels", "PivotData", "PivotText", .product(name: "Yams", package: "Yams")], swiftSettings: fast),
    .target(name: "PivotServe", dependencies: ["PivotTrain", .product(name: "Hummingbird", package: "hummingbird")], swiftSettings: fast),
    .executableTarget(
      name: "pivot",
      dependencies: [
        "PivotTensor", "PivotNN", "PivotModels", "PivotTrain", "PivotData", "PivotText", "PivotServe", "COpenBLAS",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ]),
    .testTarget(name: "PivotTensorTests", dependencies: ["PivotTensor", "PivotNN"], resources: [.copy("Fixtures")]),
    .testTarget(name: "PivotNNTests", dependencies: ["PivotNN"], resources: [.copy("Fixtures")]),
    .testTarget(name: "PivotModelsTests", dependencies: ["PivotModels"], resources: [.copy("Fixtures")]),
    .testTarget(name: "PivotTrainTests", dependencies: ["PivotTrain", "PivotData", "PivotText"]),
    .testTarget(name: "PivotTextTests", dependencies: ["PivotText"], resources: [.copy("Fixtures")]),
    .testTarget(name: "PivotServeTests", dependencies: ["PivotServe", "PivotTrain", "PivotModels", "PivotData", "PivotText", "PivotTensor"]),
    .testTarget(name: "PivotDataTests", dependencies: ["PivotData"], resources: [.copy("Fixtures")]),
  ]
)
