"""Excel (and later PDF) renderers shared by the domains: :mod:`backend.exports.excel`
declares sheets and streams them out and in; :mod:`backend.exports.http` holds the plain
HTTP pieces every download and upload route uses (caller, refusals, file responses)."""
