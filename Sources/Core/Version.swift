/// The one version of saliencyd, saliencyctl and the protocol documents they implement:
/// `saliencyd --version`, `saliencyctl --version`, the `status` reply and `saliencyd_build_info`.
public enum SaliencyVersion {
    public static let string = "0.2.0"
}
