"""The built-in plugins: ordinary plugins that use only the public ``plugbus`` surface.

Each can be switched off in config.yaml (``plugins.builtins``) and replaced by an installed
package; none has a back door into the core.
"""
