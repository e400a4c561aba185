"""The interactive app: Streamlit pages (ldm/interfaces/app/views) over small functions here that call the library.

The page scripts only lay out widgets; everything they compute comes from functions in this
package (testable without a browser), which in turn only call the ldm library.
"""
