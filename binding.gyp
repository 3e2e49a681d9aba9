{
  "targets": [
    {
      "target_name": "relockd_native",
      "sources": ["native/relockd.cc"],
      # node_addon_api_except: include dir + NAPI_CPP_EXCEPTIONS + -fexceptions
      "dependencies": [
        "<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"
      ],
      "defines": ["NAPI_VERSION=9", "_GNU_SOURCE"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra"]
    },
    {
      # Not an addon: preloaded into the image a re-exec starts (native/exec_hold.c).
      "target_name": "relockd_exec_hold",
      "type": "shared_library",
      "sources": ["native/exec_hold.c"],
      "cflags": ["-Wall", "-Wextra"],
      "libraries": ["-ldl"]
    }
  ]
}
