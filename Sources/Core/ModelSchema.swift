/// The layout of one model's convolution filters.
///
/// A model's filters are numbered globally in parameter order, layer by layer
/// (docs/method.md §1). `ModelSchema` maps a global filter index to `(layer, channel)`
/// and back, and carries a fingerprint that producers put in every prediction
/// header so the daemon never scores a row against the wrong layout.
public struct ModelSchema: Sendable, Hashable, Codable {
    /// One convolution layer: `filters` output channels, at `depth` (0 = closest to the input).
    public struct Layer: Sendable, Hashable, Codable {
        public var name: String
        public var filters: Int
        /// Depth index used for depth-bias reports; defaults to the layer's position.
        public var depth: Int?

        public init(name: String, filters: Int, depth: Int? = nil) {
            self.name = name
            self.filters = filters
            self.depth = depth
        }
    }

    public var model: String
    public var layers: [Layer]
    /// What a row holds: nil = plain saliency (mean |dL/dW| per filter, the default and 0.1's only
    /// quantity), or one of `knownQuantities` other than "saliency" (e.g. "taylor": Taylor blame,
    /// docs/tap.md). "saliency" normalizes to nil, so a schema that spells it out keeps its old bytes
    /// and fingerprint. A non-nil quantity is part of the fingerprint (docs/protocol.md §1), so two
    /// streams of the same network with different quantities are different layouts.
    public private(set) var quantity: String?

    /// Prefix sums: `offsets[i]` is the global index of layer `i`'s first filter; `offsets.last == filterCount`.
    public private(set) var offsets: [Int]

    enum CodingKeys: String, CodingKey { case model, layers, quantity }

    /// The quantities this daemon knows (docs/protocol.md §1). "saliency" is the default.
    public static let knownQuantities = ["saliency", "taylor"]
    /// Longest quantity string accepted before it is even compared with the known ones.
    public static let maxQuantityBytes = 64

    public init(model: String, layers: [Layer], quantity: String? = nil) throws(SaliencyError) {
        self.model = model
        self.layers = layers
        self.offsets = []
        self.quantity = try Self.normalizedQuantity(quantity)
        try validateAndIndex()
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.model = try c.decode(String.self, forKey: .model)
        self.layers = try c.decode([Layer].self, forKey: .layers)
        self.offsets = []
        self.quantity = try Self.normalizedQuantity(try c.decodeIfPresent(String.self, forKey: .quantity))
        try validateAndIndex()
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(model, forKey: .model)
        try c.encode(layers, forKey: .layers)
        try c.encodeIfPresent(quantity, forKey: .quantity)
    }

    /// The quantity's name for display: "saliency" when the schema has none.
    public var quantityName: String { quantity ?? "saliency" }

    /// nil for absent or "saliency"; the value for another known quantity; `.invalidSchema` otherwise.
    static func normalizedQuantity(_ q: String?) throws(SaliencyError) -> String? {
        guard let q, q != "saliency" else { return nil }
        let known = knownQuantities.joined(separator: ", ")
        guard !q.isEmpty, q.utf8.count <= maxQuantityBytes, q.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else {
            throw SaliencyError(.invalidSchema, "quantity must be 1...\(maxQuantityBytes) bytes of printable ASCII without spaces, got \(q.utf8.count) bytes; known quantities: \(known)")
        }
        guard knownQuantities.contains(q) else {
            throw SaliencyError(.invalidSchema, "quantity '\(q)' is not known to this daemon (\(known)); upgrade saliencyd or publish saliency")
        }
        return q
    }

    private mutating func validateAndIndex() throws(SaliencyError) {
        guard !model.isEmpty, model.utf8.count <= 128 else {
            throw SaliencyError(.invalidSchema, "model name must be 1...128 bytes, got \(model.utf8.count)")
        }
        guard model.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: ".") }) else {
            throw SaliencyError(.invalidSchema, "model name '\(model)' must be printable ASCII without spaces or dots (it is part of ZeroMQ topics)")
        }
        guard !layers.isEmpty else {
            throw SaliencyError(.invalidSchema, "schema for '\(model)' has no layers")
        }
        // Checked arithmetic throughout: a hostile schema may carry any Int (e.g. 1 and Int.max).
        guard layers.count <= Self.maxLayers else {
            throw SaliencyError(.invalidSchema, "schema for '\(model)' has \(layers.count) layers; the limit is \(Self.maxLayers)")
        }
        var offsets = [0]
        offsets.reserveCapacity(layers.count + 1)
        var seen = Set<String>()
        seen.reserveCapacity(layers.count)
        for (i, layer) in layers.enumerated() {
            guard layer.filters > 0, layer.filters <= Self.maxFilters else {
                throw SaliencyError(.invalidSchema, "layer \(i) '\(layer.name.prefix(64))' has \(layer.filters) filters; every layer needs 1...\(Self.maxFilters)")
            }
            guard !layer.name.isEmpty, layer.name.utf8.count <= Self.maxLayerNameBytes else {
                throw SaliencyError(.invalidSchema, "layer \(i) name must be 1...\(Self.maxLayerNameBytes) bytes, got \(layer.name.utf8.count)")
            }
            guard layer.name.unicodeScalars.allSatisfy({ $0.value >= 0x20 && $0.value != 0x7F && !(0x80...0x9F).contains($0.value) }) else {
                throw SaliencyError(.invalidSchema, "layer \(i) name contains control characters")
            }
            if let d = layer.depth, d < 0 || d > Self.maxLayers {
                throw SaliencyError(.invalidSchema, "layer \(i) '\(layer.name.prefix(64))' has depth \(d); depths are 0...\(Self.maxLayers)")
            }
            guard seen.insert(layer.name).inserted else {
                throw SaliencyError(.invalidSchema, "layer name '\(layer.name.prefix(64))' appears twice")
            }
            let (sum, overflow) = offsets[i].addingReportingOverflow(layer.filters)
            guard !overflow, sum <= Self.maxFilters else {
                throw SaliencyError(.invalidSchema, "schema has more than \(Self.maxFilters) filters in total (at layer \(i)); the limit is \(Self.maxFilters)")
            }
            offsets.append(sum)
        }
        self.offsets = offsets
    }

    /// Hard limits of the layout itself (the daemon's admission budgets are usually tighter).
    public static let maxFilters = 1 << 24
    public static let maxLayers = 65_535
    public static let maxLayerNameBytes = 512

    /// Total number of filters `K`.
    public var filterCount: Int { offsets.last ?? 0 }

    /// The depth of layer `i` (explicit, or its position).
    public func depth(ofLayer i: Int) -> Int { layers[i].depth ?? i }

    /// `(layer index, channel)` of global filter `j`. O(log L).
    public func locate(_ j: Int) -> (layer: Int, channel: Int) {
        precondition(j >= 0 && j < filterCount, "filter \(j) out of range 0..<\(filterCount)")
        var lo = 0, hi = layers.count - 1
        while lo < hi {
            let mid = (lo + hi + 1) / 2
            if offsets[mid] <= j { lo = mid } else { hi = mid - 1 }
        }
        return (lo, j - offsets[lo])
    }

    /// Global index of `channel` in layer `layer`.
    public func globalIndex(layer: Int, channel: Int) -> Int {
        precondition(channel >= 0 && channel < layers[layer].filters)
        return offsets[layer] + channel
    }

    /// Layer index by name.
    public func layerIndex(named name: String) -> Int? { layers.firstIndex { $0.name == name } }

    /// A 64-bit FNV-1a fingerprint of the canonical layout (model name, layer names and sizes, then
    /// `quantity\0<value>\0` when the quantity is not plain saliency).
    /// Producers and the daemon compute it the same way (docs/protocol.md); Python: `saliency_tap.schema_fingerprint`.
    public var fingerprint: UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        func mix(_ bytes: some Sequence<UInt8>) {
            for b in bytes { h ^= UInt64(b); h = h &* 0x0000_0100_0000_01b3 }
        }
        mix(model.utf8)
        mix([0])
        for layer in layers {
            mix(layer.name.utf8)
            mix([0])
            mix("\(layer.filters)".utf8)
            mix([0])
        }
        if let quantity {
            mix("quantity".utf8)
            mix([0])
            mix(quantity.utf8)
            mix([0])
        }
        return h
    }
}
